"""Single source of truth for modality order, region order, subsets and BraTS label conventions.

Every module, config and report in lckd_med takes these names and orders from here.

* Modality (channel) order: ``flair, t1, t1ce, t2`` -- the BraTS2018 file suffixes. Image tensors are
  ``(B, 4, H, W, D)`` with channel ``i`` holding ``MODALITIES[i]``; availability masks are ``(B, 4)`` booleans
  in the same order.
* Region (output channel) order: ``ET, TC, WT``. Network outputs are ``(B, 3, H, W, D)`` logits of three
  independent sigmoid channels in this order.
* Subsets: the 15 non-empty modality subsets, named by joining modality keys with ``+`` in modality order
  (``"t1ce+t2"``). Canonical order: by number of sequences, then by modality order (singles, pairs, triples,
  all four) -- the row order of every per-subset report.

These are the BraTS values; :data:`lckd_med.modalities.BRATS` is the same as a
:class:`~lckd_med.modalities.ModalitySpec`, the form the networks, dropout, election, sweep and checkpoints take
(another modality set declares its own spec, see ``docs/modalities.md``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "AFFINE_ATOL_MM",
    "GRID_RULES",
    "MODALITIES",
    "NUM_MODALITIES",
    "REGIONS",
    "NUM_REGIONS",
    "INFORMATIVE_SEQUENCE",
    "SUBSETS",
    "SUBSET_NAMES",
    "SUBSET_SEPARATOR",
    "FULL_SUBSET",
    "SINGLE_SUBSETS",
    "subset_name",
    "parse_subset",
    "subset_to_mask",
    "mask_to_subset",
    "LabelConvention",
    "BRATS_LEGACY",
    "BRATS_2023",
    "LABEL_CONVENTIONS",
    "label_convention",
    "RELEASE_FILE_SUFFIXES",
    "SEGMENTATION_SUFFIX",
    "file_suffixes",
    "BRATS_SHAPE_1MM",
    "BRATS_AFFINE_1MM",
    "brats_affine",
    "HD95_ONE_EMPTY_MM",
    "ET_MIN_VOXELS",
]

#: Output-grid choices of prediction besides a sequence name: the sequence with the largest voxels (fewest to
#: segment) or the smallest (lckd_med.inference.geometry.choose_reference).
GRID_RULES: tuple[str, ...] = ("coarsest", "finest")

#: Modality keys in channel order (BraTS2018 file suffixes).
MODALITIES: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")
NUM_MODALITIES: int = len(MODALITIES)

#: Region names in output-channel order.
REGIONS: tuple[str, ...] = ("ET", "TC", "WT")
NUM_REGIONS: int = len(REGIONS)

#: The sequence that carries each region (BraTS, and the synthetic data by construction): enhancement is seen in
#: T1ce, so ET and the tumour core; oedema in FLAIR, so the whole tumour. LCKD's election is expected to pick these
#: teachers (Wang et al., MICCAI 2023); the comparison scores each region over the subsets that contain it.
INFORMATIVE_SEQUENCE: dict[str, str] = {"ET": "t1ce", "TC": "t1ce", "WT": "flair"}

SUBSET_SEPARATOR = "+"

#: The 15 non-empty subsets as tuples of modality keys, in canonical report order.
SUBSETS: tuple[tuple[str, ...], ...] = tuple(
    combo for k in range(1, NUM_MODALITIES + 1) for combo in itertools.combinations(MODALITIES, k)
)
#: Canonical subset names (``"flair"``, ..., ``"t1ce+t2"``, ..., ``"flair+t1+t1ce+t2"``).
SUBSET_NAMES: tuple[str, ...] = tuple(SUBSET_SEPARATOR.join(s) for s in SUBSETS)
FULL_SUBSET: str = SUBSET_NAMES[-1]
SINGLE_SUBSETS: tuple[str, ...] = tuple(MODALITIES)


def subset_name(modalities: Iterable[str], names: Sequence[str] = MODALITIES) -> str:
    """Canonical name of a subset given its modality keys in any order.

    ``names``: the modality order (BraTS by default; :class:`lckd_med.modalities.ModalitySpec` passes its own).

    Raises:
        ValueError: unknown, repeated or no modality.
    """
    mods = list(modalities)
    unknown = [m for m in mods if m not in names]
    if unknown:
        raise ValueError(f"unknown modality {unknown}; expected keys from {tuple(names)}")
    if len(set(mods)) != len(mods):
        raise ValueError(f"repeated modality in {mods}")
    if not mods:
        raise ValueError("a subset needs at least one modality")
    return SUBSET_SEPARATOR.join(m for m in names if m in mods)


def parse_subset(name: str, names: Sequence[str] = MODALITIES) -> tuple[str, ...]:
    """Modality keys of a subset name such as ``"t1ce+t2"`` (any order accepted), in modality order."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"subset name must be a non-empty string, got {name!r}")
    parts = [p.strip().lower() for p in name.split(SUBSET_SEPARATOR)]
    return tuple(subset_name(parts, names).split(SUBSET_SEPARATOR))


def subset_to_mask(subset: str | Sequence[str], names: Sequence[str] = MODALITIES) -> np.ndarray:
    """Boolean availability mask of shape ``(4,)`` (``(len(names),)``) in modality order for a subset name or
    key list."""
    text = subset if isinstance(subset, str) else SUBSET_SEPARATOR.join(subset)
    mods = parse_subset(text, names)
    return np.array([m in mods for m in names], dtype=bool)


def mask_to_subset(mask: Sequence[bool] | np.ndarray, names: Sequence[str] = MODALITIES) -> str:
    """Canonical subset name of a length-4 (``len(names)``) availability mask (modality order)."""
    flags = [bool(v) for v in np.asarray(mask).reshape(-1).tolist()]
    if len(flags) != len(names):
        raise ValueError(f"availability mask must have {len(names)} entries, got {len(flags)}")
    return subset_name([m for m, f in zip(names, flags, strict=True) if f], names)


@dataclass(frozen=True)
class LabelConvention:
    """Label values of one family of BraTS editions.

    Attributes:
        name: convention id (``"brats2018"`` for 2017-2022, ``"brats2023"`` for 2023+ GLI).
        ncr: necrotic / non-enhancing core label.
        ed: peritumoral oedema label.
        et: enhancing tumour label (4 up to 2022, 3 from 2023).
    """

    name: str
    ncr: int = 1
    ed: int = 2
    et: int = 4

    @property
    def labels(self) -> tuple[int, ...]:
        """All label values allowed in a segmentation, background included."""
        return (0, self.ncr, self.ed, self.et)

    @property
    def region_labels(self) -> dict[str, tuple[int, ...]]:
        """Label values composing each region, keyed in region order: ET, TC, WT."""
        return {"ET": (self.et,), "TC": (self.ncr, self.et), "WT": (self.ncr, self.ed, self.et)}

    def regions_to_labels(self, et: np.ndarray, tc: np.ndarray, wt: np.ndarray) -> np.ndarray:
        """Nested region masks to one label map (WT -> ED, TC -> NCR, ET -> ET; inner regions win).

        Args:
            et, tc, wt: boolean arrays of one shape.

        Returns:
            uint8 label map of the same shape.
        """
        out = np.zeros(np.shape(wt), dtype=np.uint8)
        out[np.asarray(wt, bool)] = self.ed
        out[np.asarray(tc, bool)] = self.ncr
        out[np.asarray(et, bool)] = self.et
        return out


BRATS_LEGACY = LabelConvention(name="brats2018", et=4)
BRATS_2023 = LabelConvention(name="brats2023", et=3)
LABEL_CONVENTIONS: dict[str, LabelConvention] = {c.name: c for c in (BRATS_LEGACY, BRATS_2023)}


def label_convention(release: int | str | LabelConvention) -> LabelConvention:
    """Label convention of a BraTS release (2017-2022 -> ET=4; 2023 and later -> ET=3).

    Args:
        release: a year (``2018``, ``"2021"``), a convention name (``"brats2023"``) or a convention.
    """
    if isinstance(release, LabelConvention):
        return release
    if isinstance(release, str) and release.lower() in LABEL_CONVENTIONS:
        return LABEL_CONVENTIONS[release.lower()]
    try:
        year = int(str(release).lower().removeprefix("brats"))
    except ValueError:
        raise ValueError(
            f"unknown BraTS release {release!r}; give a year (2017-2030) or one of {list(LABEL_CONVENTIONS)}"
        ) from None
    if not 2012 <= year <= 2100:
        raise ValueError(f"unknown BraTS release year {year}")
    return BRATS_2023 if year >= 2023 else BRATS_LEGACY


SEGMENTATION_SUFFIX = "seg"

#: File suffix of each modality key per naming scheme: ``<case>_<suffix>.nii.gz`` (2018-2021) and
#: ``<case>-<suffix>.nii.gz`` (2023+).
RELEASE_FILE_SUFFIXES: dict[str, dict[str, str]] = {
    "legacy": {"flair": "flair", "t1": "t1", "t1ce": "t1ce", "t2": "t2"},
    "2023": {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"},
}


def file_suffixes(release: int | str) -> dict[str, str]:
    """Modality key -> file suffix for a release year (or ``"legacy"``/``"2023"``)."""
    if str(release) in RELEASE_FILE_SUFFIXES:
        return dict(RELEASE_FILE_SUFFIXES[str(release)])
    return dict(RELEASE_FILE_SUFFIXES["2023" if label_convention(release) is BRATS_2023 else "legacy"])


#: Array shape of a BraTS volume at 1 mm.
BRATS_SHAPE_1MM: tuple[int, int, int] = (240, 240, 155)
#: Affine of a BraTS volume at 1 mm as distributed (LPS; qform = sform, codes 1).
BRATS_AFFINE_1MM: np.ndarray = np.array(
    [[-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 239.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)


def brats_affine(spacing: float = 1.0) -> np.ndarray:
    """BraTS-convention affine at an isotropic ``spacing`` covering the same 240x240x155 mm field."""
    if spacing <= 0:
        raise ValueError(f"spacing must be positive, got {spacing}")
    aff = BRATS_AFFINE_1MM.copy()
    aff[:3, :3] *= spacing
    aff[1, 3] = 240.0 - spacing  # the y origin sits on the last voxel of the flipped axis
    return aff


#: HD95 (mm) when exactly one of prediction and ground truth is empty, on the 240x240x155 1 mm BraTS grid: the
#: grid diagonal sqrt(240^2 + 240^2 + 155^2) = 373.1287 (legacy BraTS scoring). Other grids use their own diagonal
#: (:func:`lckd_med.metrics.brats.image_diagonal_mm`).
HD95_ONE_EMPTY_MM: float = float(np.sqrt(sum(float(n) ** 2 for n in BRATS_SHAPE_1MM)))
#: Peers' ET post-processing threshold: a predicted ET smaller than this many voxels is relabelled NCR.
ET_MIN_VOXELS: int = 500
#: Largest difference between two affines' entries (mm) for them to describe the same grid: used by dataset
#: validation, the inference geometry checks, the loader's per-case check and the folder scorer (one value, so a
#: case that validation accepts is never refused later).
AFFINE_ATOL_MM: float = 1e-3
