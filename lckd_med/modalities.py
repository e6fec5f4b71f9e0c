"""The modality specification: which input modalities a problem has, how many channels each, in what spatial dims.

Everything that used to assume "four 3-D MRI sequences, one channel each" takes its modality count, subset names,
channel layout and file suffixes from a :class:`ModalitySpec`. :data:`BRATS` is the default and equals the
constants of :mod:`lckd_med.constants` (``MODALITIES``, ``SUBSET_NAMES``, ``RELEASE_FILE_SUFFIXES``), so BraTS
code paths are unchanged; another problem (e.g. 2-D RGB + depth + infrared) declares its own spec, which the
datalist ``meta`` block and the checkpoint record (``to_dict`` / ``from_dict``).

Layout: image tensors are ``(B, total_channels, *spatial)`` with the channels of modality ``i`` at
``channel_slices[i]`` (modalities in ``names`` order, each modality's channels contiguous); availability masks
are ``(B, num_modalities)`` booleans in ``names`` order. Subsets are named by joining modality names with ``+`` in
``names`` order; canonical order is by size, then by modality order (singles, pairs, ..., all).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lckd_med.constants import (
    MODALITIES,
    RELEASE_FILE_SUFFIXES,
    SUBSET_SEPARATOR,
    mask_to_subset,
    parse_subset,
    subset_name,
    subset_to_mask,
)

__all__ = ["ModalitySpec", "BRATS", "SPATIAL_DIMS_CHOICES", "spec_of"]

#: Spatial dimensions a spec may declare.
SPATIAL_DIMS_CHOICES: tuple[int, ...] = (2, 3)
_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, init=False)
class ModalitySpec:
    """Ordered input modalities with their channel counts, spatial dimensions and file suffixes.

    Args:
        names: modality keys in channel order (lower case letters, digits, ``_`` or ``-``; distinct).
        channels: channels of each modality, same order (e.g. 3 for RGB, 1 for depth or an MRI sequence).
        spatial_dims: 2 (images) or 3 (volumes).
        file_suffixes: edition -> ``{modality: file suffix}`` (every modality named, suffixes distinct within an
            edition), e.g. BraTS' ``"legacy"`` (``flair``) and ``"2023"`` (``t2f``). May be empty.
        name: a label for messages and the datalist ``meta`` block.

    Raises:
        ValueError / TypeError: the argument that is wrong and why.
    """

    names: tuple[str, ...]
    channels: tuple[int, ...]
    spatial_dims: int = 3
    file_suffixes: tuple[tuple[str, tuple[str, ...]], ...] = ()
    name: str = "custom"

    def __init__(
        self,
        names: Sequence[str],
        channels: Sequence[int] | None = None,
        spatial_dims: int = 3,
        file_suffixes: Mapping[str, Mapping[str, str]] | Iterable[tuple[str, Sequence[str]]] | None = None,
        name: str = "custom",
    ) -> None:
        if isinstance(names, (str, bytes)) or not isinstance(names, Sequence) or not names:
            raise ValueError(f"names must be a non-empty sequence of modality keys, got {names!r}")
        names = tuple(names)
        bad = [n for n in names if not isinstance(n, str) or not _NAME.match(n)]
        if bad:
            raise ValueError(
                f"modality names must be lower-case keys (letters, digits, '_' or '-', no {SUBSET_SEPARATOR!r}), "
                f"got {bad}"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"modality names must be distinct, got {list(names)}")
        if channels is None:
            channels = (1,) * len(names)
        if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence):
            raise ValueError(f"channels must be a sequence with one positive int per modality, got {channels!r}")
        if len(channels) != len(names):
            raise ValueError(f"channels has {len(channels)} entries for {len(names)} modalities {list(names)}")
        if not all(_is_int(c) and c > 0 for c in channels):
            raise ValueError(f"channels must be positive ints, got {list(channels)}")
        if not _is_int(spatial_dims) or spatial_dims not in SPATIAL_DIMS_CHOICES:
            raise ValueError(f"spatial_dims must be one of {SPATIAL_DIMS_CHOICES}, got {spatial_dims!r}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "channels", tuple(int(c) for c in channels))
        object.__setattr__(self, "spatial_dims", int(spatial_dims))
        object.__setattr__(self, "file_suffixes", self._check_suffixes(names, file_suffixes))
        object.__setattr__(self, "name", name)

    @staticmethod
    def _check_suffixes(names: tuple[str, ...], given: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
        if given is None:
            return ()
        items = list(given.items()) if isinstance(given, Mapping) else list(given)
        out = []
        for item in items:
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str) and item[0]):
                raise ValueError(f"file_suffixes entries must be (edition, suffixes), got {item!r}")
            edition, suffixes = item
            if isinstance(suffixes, Mapping):
                if set(suffixes) != set(names):
                    raise ValueError(
                        f"file_suffixes[{edition!r}] must name exactly the modalities {list(names)}, "
                        f"got {sorted(suffixes)}"
                    )
                suffixes = tuple(suffixes[n] for n in names)
            suffixes = tuple(suffixes)
            if len(suffixes) != len(names) or not all(isinstance(s, str) and s for s in suffixes):
                raise ValueError(f"file_suffixes[{edition!r}] needs one non-empty suffix per modality, got {suffixes}")
            if len(set(suffixes)) != len(suffixes):
                raise ValueError(f"file_suffixes[{edition!r}] repeats a suffix: {list(suffixes)}")
            out.append((edition, suffixes))
        if len({e for e, _ in out}) != len(out):
            raise ValueError(f"file_suffixes names an edition twice: {[e for e, _ in out]}")
        return tuple(out)

    # ------------------------------------------------------------------ channels
    @property
    def num_modalities(self) -> int:
        """Number of modalities ``M`` (columns of an availability mask)."""
        return len(self.names)

    @property
    def total_channels(self) -> int:
        """Channels of a stacked image (sum of :attr:`channels`)."""
        return sum(self.channels)

    @property
    def channel_slices(self) -> tuple[slice, ...]:
        """Channel range of each modality in a stacked image, modality order."""
        starts = [0, *itertools.accumulate(self.channels)]
        return tuple(slice(a, b) for a, b in itertools.pairwise(starts))

    @property
    def channel_index(self) -> tuple[int, ...]:
        """Modality index of every image channel: ``mask[:, channel_index]`` turns ``(B, M)`` into ``(B, C)``."""
        return tuple(m for m, c in enumerate(self.channels) for _ in range(c))

    # ------------------------------------------------------------------ subsets
    @property
    def subsets(self) -> tuple[tuple[str, ...], ...]:
        """The ``2**M - 1`` non-empty subsets as modality-key tuples, canonical order."""
        return tuple(c for k in range(1, self.num_modalities + 1) for c in itertools.combinations(self.names, k))

    @property
    def subset_names(self) -> tuple[str, ...]:
        """Canonical subset names (``"rgb"``, ..., ``"rgb+depth+ir"``)."""
        return tuple(SUBSET_SEPARATOR.join(s) for s in self.subsets)

    @property
    def full_subset(self) -> str:
        """Name of the subset with every modality."""
        return SUBSET_SEPARATOR.join(self.names)

    @property
    def single_subsets(self) -> tuple[str, ...]:
        """The one-modality subsets (= :attr:`names`)."""
        return self.names

    def subset_name(self, modalities: Iterable[str]) -> str:
        """Canonical name of a subset given its modality keys in any order.

        Raises:
            ValueError: unknown, repeated or no modality.
        """
        return subset_name(modalities, self.names)

    def parse_subset(self, name: str) -> tuple[str, ...]:
        """Modality keys of a subset name (any order accepted), in modality order."""
        return parse_subset(name, self.names)

    def subset_to_mask(self, subset: str | Sequence[str]) -> np.ndarray:
        """Boolean availability mask ``(M,)`` of a subset name or key list."""
        return subset_to_mask(subset, self.names)

    def mask_to_subset(self, mask: Sequence[bool] | np.ndarray) -> str:
        """Canonical subset name of an ``(M,)`` availability mask."""
        return mask_to_subset(mask, self.names)

    # ------------------------------------------------------------------ files
    @property
    def editions(self) -> tuple[str, ...]:
        """Editions (naming schemes) with file suffixes."""
        return tuple(e for e, _ in self.file_suffixes)

    def suffixes(self, edition: str) -> dict[str, str]:
        """Modality key -> file suffix of one edition.

        Raises:
            ValueError: unknown edition.
        """
        for e, suffixes in self.file_suffixes:
            if e == str(edition):
                return dict(zip(self.names, suffixes, strict=True))
        raise ValueError(f"{self.name} spec has no file suffixes for edition {edition!r}; known: {list(self.editions)}")

    # ------------------------------------------------------------------ (de)serialisation and comparison
    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (what the datalist ``meta`` block and the checkpoint store)."""
        return {
            "name": self.name,
            "names": list(self.names),
            "channels": list(self.channels),
            "spatial_dims": self.spatial_dims,
            "file_suffixes": {e: dict(zip(self.names, s, strict=True)) for e, s in self.file_suffixes},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModalitySpec:
        """Inverse of :meth:`to_dict`.

        Raises:
            TypeError: ``data`` is not a mapping; ValueError: unknown keys or invalid values.
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"a modality spec must be a mapping, got {type(data).__name__}")
        allowed = {"name", "names", "channels", "spatial_dims", "file_suffixes"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(f"unknown modality spec keys {unknown}; allowed: {sorted(allowed)}")
        if "names" not in data:
            raise ValueError("a modality spec needs 'names'")
        return cls(
            names=data["names"],
            channels=data.get("channels"),
            spatial_dims=data.get("spatial_dims", 3),
            file_suffixes=data.get("file_suffixes"),
            name=data.get("name", "custom"),
        )

    def differences(self, other: ModalitySpec) -> list[str]:
        """What differs between two specs, one line per field (empty when they describe the same input)."""
        out = []
        for field in ("names", "channels", "spatial_dims", "file_suffixes"):
            a, b = getattr(self, field), getattr(other, field)
            if a != b:
                if field == "file_suffixes":
                    a, b = self.to_dict()[field], other.to_dict()[field]
                out.append(f"{field}: {a!r} vs {b!r}")
        return out

    def check_same(self, other: ModalitySpec, what: str, other_what: str) -> None:
        """Raise unless ``other`` describes the same input as this spec (the ``name`` label is not compared).

        Raises:
            ValueError: naming both sources and every field that differs.
        """
        diff = self.differences(other)
        if diff:
            raise ValueError(f"modality spec of {what} differs from {other_what}: " + "; ".join(diff))


#: The BraTS spec: four 3-D MRI sequences, one channel each, with the BraTS file suffixes.
BRATS = ModalitySpec(
    names=MODALITIES,
    channels=(1,) * len(MODALITIES),
    spatial_dims=3,
    file_suffixes=RELEASE_FILE_SUFFIXES,
    name="brats",
)


def spec_of(value: ModalitySpec | Mapping[str, Any] | None) -> ModalitySpec:
    """A spec from a spec, its :meth:`~ModalitySpec.to_dict` form, or ``None`` (= :data:`BRATS`, what data and
    checkpoints written before specs existed hold)."""
    if value is None:
        return BRATS
    if isinstance(value, ModalitySpec):
        return value
    return ModalitySpec.from_dict(value)
