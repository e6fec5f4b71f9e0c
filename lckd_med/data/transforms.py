"""MONAI transforms specific to multi-sequence BraTS data with missing sequences.

Conventions (from :mod:`lckd_med.constants`):

* ``image``: ``(4, H, W, D)`` float32, channel ``i`` holds ``MODALITIES[i]`` (flair, t1, t1ce, t2); a missing
  sequence is an all-zero channel.
* ``modality_mask``: ``(4,)`` torch.bool, True where the sequence is available (same order); ``(B, 4)`` batched.
* ``label`` after :class:`LabelToRegionsd`: ``(3, H, W, D)`` in ``REGIONS`` order (ET, TC, WT).

Every dictionary transform ``XXXd`` has an array twin ``XXX``.

The modality dropout and masking transforms also take another :class:`~lckd_med.modalities.ModalitySpec`
(``modalities=``): images ``(C, ...)`` with ``C = spec.total_channels`` (each modality's channels contiguous),
masks ``(M,)``; a dropped modality has all its channels zeroed. Loading (:class:`LoadModalities`) reads BraTS.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Hashable, Mapping, Sequence
from itertools import combinations
from typing import Any

import monai.data
import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import ImageReader, MetaTensor
from monai.data.utils import correct_nifti_header_if_necessary
from monai.transforms import (
    ConvertToMultiChannelBasedOnBratsClasses,
    EnsureChannelFirst,
    LoadImage,
    MapTransform,
    RandomizableTransform,
    Transform,
)
from monai.transforms.io.array import switch_endianness
from monai.utils import ImageMetaKey, TransformBackends

from lckd_med.constants import (
    AFFINE_ATOL_MM,
    REGIONS,
    LabelConvention,
    label_convention,
)
from lckd_med.data.naming import NIFTI_EXTENSIONS
from lckd_med.data.volume import read_nifti
from lckd_med.modalities import BRATS, ModalitySpec, spec_of

__all__ = [
    "IMAGE_KEY",
    "LABEL_KEY",
    "MASK_KEY",
    "CASE_KEY",
    "DROPOUT_DISTRIBUTIONS",
    "DROPOUT_GRANULARITIES",
    "LoadModalities",
    "LoadModalitiesd",
    "LabelToRegions",
    "LabelToRegionsd",
    "ModalityDropout",
    "MaskMissingModalities",
    "MaskMissingModalitiesd",
    "drop_modalities_batch",
    "mask_to_code",
    "code_to_mask",
]

#: Sample-dict keys shared by every pipeline.
IMAGE_KEY = "image"
LABEL_KEY = "label"
MASK_KEY = "modality_mask"
CASE_KEY = "case_id"

#: Named subset distributions understood by :class:`ModalityDropout` (a mapping of weights is also accepted).
DROPOUT_DISTRIBUTIONS: tuple[str, ...] = ("uniform", "uniform_size")
#: When :func:`drop_modalities_batch` draws: ``"batch"`` = one subset for the whole batch (the LCKD reference's
#: phase 2), ``"sample"`` = one subset per sample.
DROPOUT_GRANULARITIES: tuple[str, ...] = ("sample", "batch")

# Channel order of MONAI's ConvertToMultiChannelBasedOnBratsClasses output.
_MONAI_BRATS_ORDER: tuple[str, ...] = ("TC", "WT", "ET")
# A subset is encoded as an int with bit i set when modality i (spec order) is kept: 2**M codes, 0 = empty.


def _to_channels_first(img: MetaTensor, spatial_dims: int, channels: int) -> MetaTensor:
    """A loaded ``(C, *S, 1, ...)`` image (NIfTI vector components first, trailing singleton axes) or, in 2-D, a
    ``(1, H, W, C)`` array as ``(C, *spatial)``; anything else is returned unchanged for the caller's shape check."""
    extra = img.shape[1 + spatial_dims :]
    if img.ndim > 1 + spatial_dims and all(n == 1 for n in extra):
        return img.reshape(img.shape[: 1 + spatial_dims])
    if spatial_dims == 2 and img.ndim == 4 and img.shape[0] == 1 and img.shape[-1] == channels > 1:
        return img[0].permute(2, 0, 1)
    return img


def _is_missing_path(path: Any) -> bool:
    return path is None or (isinstance(path, str) and not path.strip())


def _case_prefix(case_id: Any) -> str:
    return f"case {case_id!r}: " if case_id not in (None, "") else ""


def mask_to_code(mask: Sequence[bool] | np.ndarray | torch.Tensor, spec: ModalitySpec = BRATS) -> int:
    """Integer code of an ``(M,)`` availability mask (bit ``i`` set when modality ``i`` of ``spec`` is available)."""
    flags = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask, dtype=bool).reshape(-1)
    if flags.size != spec.num_modalities:
        raise ValueError(f"availability mask must have {spec.num_modalities} entries, got {flags.size}")
    return int(sum(1 << i for i, f in enumerate(flags) if f))


def code_to_mask(code: int, spec: ModalitySpec = BRATS) -> np.ndarray:
    """``(M,)`` boolean mask (modality order) of a subset code; inverse of :func:`mask_to_code`."""
    num_codes = 1 << spec.num_modalities
    if not 0 <= int(code) < num_codes:
        raise ValueError(f"subset code must be in [0, {num_codes - 1}], got {code}")
    return np.array([(int(code) >> i) & 1 == 1 for i in range(spec.num_modalities)], dtype=bool)


def _zero_channels(
    img: NdarrayOrTensor, keep: np.ndarray | torch.Tensor, spec: ModalitySpec = BRATS
) -> NdarrayOrTensor:
    """Zero the channels (dim 0) of the modalities where ``keep`` ``(M,)`` is False; NaN/inf there become 0 too."""
    if spec.total_channels != spec.num_modalities:  # several channels per modality: one flag per channel
        keep = np.asarray(torch.as_tensor(keep, dtype=torch.bool).cpu(), dtype=bool).reshape(-1)[
            list(spec.channel_index)
        ]
    if isinstance(img, torch.Tensor):
        keep_t = torch.as_tensor(keep, dtype=torch.bool, device=img.device).reshape(-1, *([1] * (img.ndim - 1)))
        return img.masked_fill(~keep_t, 0)
    keep_np = np.asarray(keep, dtype=bool).reshape(-1, *([1] * (img.ndim - 1)))
    return np.where(keep_np, img, np.zeros((), dtype=img.dtype))


def _check_channels(img: NdarrayOrTensor, what: str = "image", spec: ModalitySpec = BRATS) -> None:
    if img.ndim < 2 or img.shape[0] != spec.total_channels:
        raise ValueError(
            f"{what} must be channel-first with {spec.total_channels} channels {spec.names} "
            f"(channels per modality {spec.channels}), got shape {tuple(img.shape)}"
        )


def _as_bool_mask(mask: Any, img: NdarrayOrTensor | None = None, spec: ModalitySpec = BRATS) -> torch.Tensor:
    """``(M,)`` torch.bool mask; when ``mask`` is None a modality is available where any of its channels in
    ``img`` is non-zero."""
    if mask is None:
        if img is None:
            raise ValueError("need a modality mask or an image to derive it from")
        flat = torch.as_tensor(img).reshape(spec.total_channels, -1)
        nonzero = (flat != 0).any(dim=1).cpu()
        if spec.total_channels == spec.num_modalities:
            return nonzero
        return torch.stack([nonzero[sl].any() for sl in spec.channel_slices])
    out = torch.as_tensor(mask).reshape(-1)
    if out.numel() != spec.num_modalities:
        raise ValueError(f"modality mask must have {spec.num_modalities} entries ({spec.names}), got {out.numel()}")
    return out.to(dtype=torch.bool)


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------


def _resolve_reader(reader: Any) -> ImageReader:
    if isinstance(reader, ImageReader):
        return reader
    if isinstance(reader, str):
        cls = getattr(monai.data, reader, None)
        if isinstance(cls, type) and issubclass(cls, ImageReader):
            return cls()
        raise ValueError(f"unknown image reader {reader!r}; give an ImageReader class name from monai.data")
    raise TypeError(f"reader must be an ImageReader or its class name, got {type(reader).__name__}")


# Own transform: MONAI LoadImage stacks files but cannot fill absent sequences with zeros or report availability.
class LoadModalities(Transform):
    """Load the four sequences of one case into a ``(4, H, W, D)`` MetaTensor plus a ``(4,)`` availability mask.

    With another :class:`~lckd_med.modalities.ModalitySpec` (``modalities``): one file per modality holding its
    ``spec.channels[i]`` channels, stacked to ``(spec.total_channels, *spatial)`` with an ``(M,)`` mask. A
    multi-channel file stores its channels as NIfTI vector components (the 5th dimension, ``(H, W, 1, 1, C)`` in
    2-D) or, for a 2-D spec, as the last axis of an ``(H, W, C)`` array.

    Each file is read with MONAI ``LoadImage`` (nibabel reader, channel first). A sequence may also be a nibabel
    image held in memory (``nib.Nifti1Image``, e.g. built from an array and its affine by
    :class:`lckd_med.inference.Segmenter`): it goes through the same reader's ``get_data``, so its tensor and metadata
    are those the file would give. Channels follow ``MODALITIES``;
    a sequence that is missing (``None``, ``""`` or absent) is an all-zero channel and False in the mask. Affine
    and metadata are those of the first present sequence, so spatial transforms applied afterwards can be inverted
    with ``Invertd``.

    Args:
        allow_missing: accept cases with missing sequences (at least one must be present); False raises instead.
        dtype: floating dtype of the image.
        reader: MONAI ``ImageReader`` instance or class name in ``monai.data`` (e.g. ``"NibabelReader"``); it is
            the only reader tried, so a corrupt file fails fast with that reader's message.
        modalities: the spec of the files (``None`` = BraTS).
    """

    def __init__(
        self,
        allow_missing: bool = True,
        dtype: torch.dtype = torch.float32,
        reader: Any = "NibabelReader",
        modalities: ModalitySpec | Mapping[str, Any] | None = None,
    ):
        self.spec = spec_of(modalities)
        if not isinstance(allow_missing, bool):
            raise TypeError(f"allow_missing must be a bool, got {type(allow_missing).__name__}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        self.allow_missing = allow_missing
        self.dtype = dtype
        self.reader = _resolve_reader(reader)
        self.loader = LoadImage(reader=self.reader, image_only=True, ensure_channel_first=True, dtype=np.float32)

    def _from_image(self, image: nib.spatialimages.SpatialImage, loader: LoadImage, name: str) -> MetaTensor:
        """``LoadImage``'s steps after ``reader.read``, on an image held in memory (the reader's header correction
        included; ``get_data`` pairs images with the names ``read`` would have recorded)."""
        image = correct_nifti_header_if_necessary(image)
        self.reader.filenames = (name,)
        array, meta = self.reader.get_data(image)
        array = np.asarray(array, dtype=loader.dtype) if loader.dtype is not None else np.asarray(array)
        meta = switch_endianness(meta, "<")
        meta[ImageMetaKey.FILENAME_OR_OBJ] = name
        img = MetaTensor.ensure_torch_and_prune_meta(
            array, meta, loader.simple_keys, pattern=loader.pattern, sep=loader.sep
        )
        return EnsureChannelFirst()(img, meta_dict=meta) if loader.ensure_channel_first else img

    def read(
        self,
        path: str | nib.spatialimages.SpatialImage,
        case_id: Any = None,
        what: str = "image",
        loader: LoadImage | None = None,
        channels: int = 1,
    ) -> MetaTensor:
        """Read one 3D volume (a file, or a nibabel image in memory) as a ``(1, H, W, D)`` MetaTensor
        (``(channels, *spatial)`` for the spec's dimensions), raising ValueError naming case and file."""
        prefix = _case_prefix(case_id)
        if isinstance(path, nib.spatialimages.SpatialImage):
            img = self._from_image(path, loader or self.loader, f"<{what} in memory>")
            return self._checked_shape(img, f"<{what} in memory>", prefix, what, channels)
        if not os.path.isfile(path):
            raise ValueError(f"{prefix}{what} file does not exist: {path}")
        brats_like = (self.spec.spatial_dims, channels) == (3, 1)
        if brats_like and str(path).lower().endswith(NIFTI_EXTENSIONS):
            # the one reader's header checks (implausible size, NaN affine, shape) before any voxel is read; they
            # expect one 3-D volume per file, so other specs rely on the shape check below
            header = read_nifti(path, read_data=False)
            if header.problems:
                raise ValueError(f"{prefix}cannot read {what} file {path}: {header.problems[0]}")
        try:
            # runtime reader: LoadImage would otherwise retry every installed reader (slow, vague error)
            img = (loader or self.loader)(path, reader=self.reader)
        except Exception as e:  # any reader failure becomes one clear error naming the file
            raise ValueError(f"{prefix}cannot read {what} file {path}: {type(e).__name__}: {e}") from e
        return self._checked_shape(img, path, prefix, what, channels)

    def _checked_shape(self, img: MetaTensor, path: str, prefix: str, what: str, channels: int) -> MetaTensor:
        dims = self.spec.spatial_dims
        if dims != 3 or channels != 1:
            img = _to_channels_first(img, dims, channels)
        if img.ndim != 1 + dims or img.shape[0] != channels:
            kind = (
                "a single 3D volume" if (dims, channels) == (3, 1) else f"a {dims}-D image with {channels} channel(s)"
            )
            raise ValueError(f"{prefix}{what} file {path} is not {kind} (loaded shape {tuple(img.shape)})")
        if not isinstance(img, MetaTensor):
            img = MetaTensor(img)
        return img

    def __call__(
        self, paths: Mapping[str, str | None] | Sequence[str | None], case_id: Any = None
    ) -> tuple[MetaTensor, torch.Tensor]:
        """Load one case.

        Args:
            paths: modality key -> path (keys from ``MODALITIES``), or a sequence of 4 paths in modality order.
            case_id: used in error messages only.

        Returns:
            ``(image, mask)``: MetaTensor ``(4, H, W, D)`` and torch.bool ``(4,)``, both in modality order
            (``(spec.total_channels, *spatial)`` and ``(M,)`` for another spec).
        """
        prefix = _case_prefix(case_id)
        names, num = self.spec.names, self.spec.num_modalities
        if isinstance(paths, Mapping):
            unknown = [k for k in paths if k not in names]
            if unknown:
                raise ValueError(f"{prefix}unknown modality keys {unknown}; expected keys from {names}")
            ordered = [paths.get(m) for m in names]
        elif isinstance(paths, Sequence) and not isinstance(paths, str):
            if len(paths) != num:
                raise ValueError(f"{prefix}expected {num} paths in order {names}, got {len(paths)}")
            ordered = list(paths)
        else:
            raise TypeError(f"{prefix}paths must be a mapping or a sequence of paths, got {type(paths).__name__}")

        missing = [m for m, p in zip(names, ordered, strict=True) if _is_missing_path(p)]
        if len(missing) == num:
            raise ValueError(f"{prefix}no sequence present (all of {names} missing)")
        if missing and not self.allow_missing:
            raise ValueError(f"{prefix}missing sequence(s) {missing} and allow_missing=False")

        loaded: dict[int, MetaTensor] = {}
        for i, (mod, path) in enumerate(zip(names, ordered, strict=True)):
            if _is_missing_path(path):
                continue
            if isinstance(path, nib.spatialimages.SpatialImage):
                loaded[i] = self.read(path, case_id, what=mod, channels=self.spec.channels[i])
                continue
            if not isinstance(path, (str, os.PathLike)):
                raise TypeError(f"{prefix}path of {mod} must be a string or a nibabel image, got {type(path).__name__}")
            loaded[i] = self.read(os.fspath(path), case_id, what=mod, channels=self.spec.channels[i])

        first_i = min(loaded)
        ref = loaded[first_i]
        ref_path = ordered[first_i]
        for i, img in loaded.items():
            if img.shape[1:] != ref.shape[1:]:
                raise ValueError(
                    f"{prefix}shape mismatch: {names[i]} file {ordered[i]} has shape {tuple(img.shape[1:])} "
                    f"but {names[first_i]} file {ref_path} has {tuple(ref.shape[1:])}"
                )
            if not torch.allclose(img.affine, ref.affine, atol=AFFINE_ATOL_MM):
                warnings.warn(
                    f"{prefix}affine of {names[i]} file {ordered[i]} differs from {ref_path}; "
                    f"using the affine of {names[first_i]}",
                    stacklevel=2,
                )

        data = torch.zeros((self.spec.total_channels, *ref.shape[1:]), dtype=self.dtype)
        slices = self.spec.channel_slices
        for i, img in loaded.items():
            data[slices[i]] = img.as_tensor()
        mask = torch.zeros(num, dtype=torch.bool)
        mask[list(loaded)] = True
        meta = dict(ref.meta)
        meta["affine"] = ref.affine.clone()
        image = MetaTensor(data, meta=meta)
        return image, mask


class LoadModalitiesd(MapTransform):
    """Dictionary version of :class:`LoadModalities`, optionally loading the label as well.

    Reads the path keys (``MODALITIES`` by default) and writes ``image_key`` (MetaTensor ``(4, H, W, D)``) and
    ``mask_key`` (torch.bool ``(4,)``). Missing path values are normalised to ``""``, and with ``none_to_empty``
    every other top-level None value (e.g. the datalist's ``"grade": null``) too, because PyTorch's collate
    cannot batch None.
    With ``label_key`` set, that path is loaded too as a ``(1, H, W, D)`` MetaTensor in its on-disk dtype and
    must match the image shape.

    Args:
        keys: modality path keys, in ``MODALITIES`` order (a subset of it is allowed; absent ones count as missing).
        image_key: output key of the stacked image.
        mask_key: output key of the availability mask.
        label_key: key of the label path to load, or None to leave any label untouched.
        case_key: key whose value names the case in error messages.
        allow_missing: see :class:`LoadModalities`.
        reader: MONAI image reader.
        none_to_empty: replace None values of all keys by ``""`` (see above).
        modalities: the spec of the files (``None`` = BraTS); ``keys`` default to its names.
    """

    def __init__(
        self,
        keys: KeysCollection | None = None,
        image_key: str = IMAGE_KEY,
        mask_key: str = MASK_KEY,
        label_key: str | None = LABEL_KEY,
        case_key: str = CASE_KEY,
        allow_missing: bool = True,
        reader: Any = "NibabelReader",
        none_to_empty: bool = True,
        modalities: ModalitySpec | Mapping[str, Any] | None = None,
    ) -> None:
        spec = spec_of(modalities)
        super().__init__(spec.names if keys is None else keys, allow_missing_keys=True)
        unknown = [k for k in self.keys if k not in spec.names]
        if unknown:
            raise ValueError(f"LoadModalitiesd keys must be modality keys from {spec.names}, got {unknown}")
        self.image_key = image_key
        self.mask_key = mask_key
        self.label_key = label_key
        self.case_key = case_key
        self.none_to_empty = bool(none_to_empty)
        self.loader = LoadModalities(allow_missing=allow_missing, reader=reader, modalities=spec)
        self.label_loader = LoadImage(reader=self.loader.reader, image_only=True, ensure_channel_first=True, dtype=None)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        case_id = d.get(self.case_key)
        paths = {k: d.get(k) for k in self.keys}
        image, mask = self.loader(paths, case_id=case_id)
        for k in self.keys:
            if _is_missing_path(d.get(k)):
                d[k] = ""
        if self.none_to_empty:
            d.update({k: "" for k, v in d.items() if v is None and k != self.label_key})
        d[self.image_key] = image
        d[self.mask_key] = mask
        if self.label_key is not None:
            path = d.get(self.label_key)
            if _is_missing_path(path):
                raise ValueError(f"{_case_prefix(case_id)}no label path under key {self.label_key!r}")
            if isinstance(path, (str, os.PathLike)):
                label = self.loader.read(os.fspath(path), case_id, what="label", loader=self.label_loader)
                if label.shape[1:] != image.shape[1:]:
                    raise ValueError(
                        f"{_case_prefix(case_id)}label file {path} has shape {tuple(label.shape[1:])} but the "
                        f"image has {tuple(image.shape[1:])}"
                    )
                d[self.label_key] = label
        return d


# --------------------------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------------------------


class LabelToRegions(Transform):
    """BraTS label map ``(1, H, W, D)`` (or ``(H, W, D)``) -> region masks ``(3, H, W, D)`` in ``REGIONS`` order.

    Wraps MONAI ``ConvertToMultiChannelBasedOnBratsClasses`` (output TC, WT, ET) and reorders its channels to
    ``REGIONS`` (ET, TC, WT). MetaTensor metadata is kept.

    Args:
        convention: label convention, BraTS release year or convention name (ET=4 up to 2022, ET=3 from 2023).
        dtype: output dtype (float32 by default; uint8/bool save memory when caching).
        check_values: raise ValueError when the label holds values outside ``convention.labels`` (catches an
            ET=3 label read with the legacy convention and vice versa).
        spatial_dims: 3 (``(1, H, W, D)`` labels, BraTS) or 2 (``(1, H, W)`` or ``(H, W)`` labels -> ``(3, H, W)``).
    """

    backend = ConvertToMultiChannelBasedOnBratsClasses.backend

    def __init__(
        self,
        convention: int | str | LabelConvention = "brats2018",
        dtype: torch.dtype = torch.float32,
        check_values: bool = True,
        spatial_dims: int = 3,
    ) -> None:
        if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        self.spatial_dims = int(spatial_dims)
        self.convention = label_convention(convention)
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"dtype must be a torch.dtype, got {dtype!r}")
        self.dtype = dtype
        self.check_values = bool(check_values)
        self.converter = ConvertToMultiChannelBasedOnBratsClasses(et_label=self.convention.et)
        self.order = [_MONAI_BRATS_ORDER.index(r) for r in REGIONS]

    def __call__(self, label: NdarrayOrTensor, case_id: Any = None) -> NdarrayOrTensor:
        """Convert one label map; ``case_id`` is only used in error messages."""
        sd = self.spatial_dims
        if not (label.ndim == sd or (label.ndim == sd + 1 and label.shape[0] == 1)):
            axes = ", ".join("HWD"[:sd])
            raise ValueError(
                f"{_case_prefix(case_id)}label must be (1, {axes}) or ({axes}), got shape {tuple(label.shape)}"
            )
        lab = label if isinstance(label, torch.Tensor) else torch.as_tensor(label)
        if sd == 2 and lab.ndim == 3:
            lab = lab[0]  # MONAI's converter squeezes a channel only from 4-D input
        if self.check_values:
            allowed = torch.tensor(self.convention.labels, dtype=lab.dtype, device=lab.device)
            bad = ~torch.isin(lab.as_tensor() if isinstance(lab, MetaTensor) else lab, allowed)
            if bool(bad.any()):
                values = sorted({float(v) for v in torch.unique(lab[bad]).tolist()})
                raise ValueError(
                    f"{_case_prefix(case_id)}label values {values} are not in convention {self.convention.name!r} "
                    f"(allowed {self.convention.labels})"
                )
        out = self.converter(lab)[self.order].to(self.dtype)
        return out if isinstance(label, torch.Tensor) else out.numpy()


class LabelToRegionsd(MapTransform):
    """Dictionary version of :class:`LabelToRegions`.

    Args:
        keys: label keys.
        convention, dtype, check_values, spatial_dims: see :class:`LabelToRegions`.
        case_key: key naming the case in error messages.
        allow_missing_keys: skip keys absent from the data.
    """

    backend = LabelToRegions.backend

    def __init__(
        self,
        keys: KeysCollection = LABEL_KEY,
        convention: int | str | LabelConvention = "brats2018",
        dtype: torch.dtype = torch.float32,
        check_values: bool = True,
        case_key: str = CASE_KEY,
        allow_missing_keys: bool = False,
        spatial_dims: int = 3,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = LabelToRegions(
            convention=convention, dtype=dtype, check_values=check_values, spatial_dims=spatial_dims
        )
        self.case_key = case_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key], case_id=d.get(self.case_key))
        return d


# --------------------------------------------------------------------------------------------------------------
# Modality dropout and masking
# --------------------------------------------------------------------------------------------------------------


def _subset_code(name: str, spec: ModalitySpec = BRATS) -> int:
    mods = spec.parse_subset(name)
    return int(sum(1 << spec.names.index(m) for m in mods))


def _build_table(distribution: str | Mapping[str, float], max_kept: int, spec: ModalitySpec = BRATS) -> np.ndarray:
    """Probability table ``P[a, c]``: chance of keeping subset code ``c`` when the available subset is ``a``.

    Rows with no feasible subset are all zero.
    """
    num_codes = 1 << spec.num_modalities
    table = np.zeros((num_codes, num_codes), dtype=np.float64)
    weights: dict[int, float] | None = None
    if not isinstance(distribution, str):
        weights = {_subset_code(k, spec): float(v) for k, v in distribution.items()}
    for avail in range(1, num_codes):
        idx = [i for i in range(spec.num_modalities) if (avail >> i) & 1]
        n_max = min(len(idx), max_kept)
        for k in range(1, n_max + 1):
            for combo in combinations(idx, k):
                code = sum(1 << i for i in combo)
                if weights is not None:
                    table[avail, code] = weights.get(code, 0.0)
                elif distribution == "uniform":
                    table[avail, code] = 1.0
                else:  # uniform_size: size uniform over 1..n_max, then a uniform subset of that size
                    table[avail, code] = 1.0 / (n_max * math.comb(len(idx), k))
        total = table[avail].sum()
        if total > 0:
            table[avail] /= total
    return table


def _cdf_table(table: np.ndarray) -> np.ndarray:
    """Row-wise CDF with the last feasible entry (and beyond) pinned to 1 so that ``u < 1`` always lands."""
    cdf = np.cumsum(table, axis=1)
    for a in range(table.shape[0]):
        nz = np.flatnonzero(table[a] > 0)
        if nz.size:
            cdf[a, nz[-1] :] = 1.0
        else:
            cdf[a, :] = 1.0  # infeasible row: never sampled (guarded by the feasibility table)
    return cdf


# Own transform: MONAI's channel dropouts (e.g. RandCoarseDropout) do not draw modality subsets under availability.
class ModalityDropout(RandomizableTransform):
    """Randomly drop available sequences of one sample (array version).

    With probability ``prob`` the availability is replaced by a random non-empty subset of the available
    sequences, drawn from ``distribution``; dropped channels are zeroed. The returned mask is the AND of the input
    mask and the kept subset.

    Distributions (all restricted to subsets of the available sequences with at most ``max_kept`` members):

    * ``"uniform"``: uniform over the feasible non-empty subsets;
    * ``"uniform_size"``: number kept uniform over ``1..min(n_available, max_kept)``, then a uniform subset of
      that size;
    * a mapping ``{subset_name: weight}`` (names such as ``"t1ce+t2"``), renormalised over the feasible subsets;
      a sample whose availability admits none of them raises ValueError.

    Random draws: two uniforms per draw (fire?, which subset). With ``granularity="sample"`` there is one draw per
    sample, so a batch helper call with seed ``s`` reproduces sequential single-sample calls with seed ``s``. With
    ``granularity="batch"`` :func:`drop_modalities_batch` makes one draw for the whole batch, from the sequences every
    sample of the batch has (the LCKD reference: ``k = randint(1, 3)`` kept, a random subset of size ``k``, the same
    for the batch, i.e. ``distribution="uniform_size", max_kept=3, granularity="batch"``); if the samples share no
    sequence, each sample then draws on its own.

    Args:
        prob: probability of dropping, in [0, 1].
        distribution: ``"uniform"``, ``"uniform_size"`` or a mapping of subset names to non-negative weights.
        max_kept: at most this many sequences are kept (1..M); None means no limit. ``max_kept=3`` guarantees at
            least one sequence is dropped when all four are available (the "1 to 3 kept" recipe).
        granularity: ``"sample"`` (default) or ``"batch"``, see above; a single-sample call is the same for both.
        modalities: the :class:`~lckd_med.modalities.ModalitySpec` (or its ``to_dict`` form) of the images and
            masks; ``None`` = BraTS. Images have ``spec.total_channels`` channels; a dropped modality has all its
            channels zeroed.
    """

    def __init__(
        self,
        prob: float = 0.5,
        distribution: str | Mapping[str, float] = "uniform",
        max_kept: int | None = None,
        granularity: str = "sample",
        modalities: ModalitySpec | Mapping[str, Any] | None = None,
    ) -> None:
        self.spec = spec_of(modalities)
        num_mod = self.spec.num_modalities
        if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0.0 <= float(prob) <= 1.0:
            raise ValueError(f"prob must be a number in [0, 1], got {prob!r}")
        if granularity not in DROPOUT_GRANULARITIES:
            raise ValueError(f"granularity must be one of {DROPOUT_GRANULARITIES}, got {granularity!r}")
        self.granularity = granularity
        if max_kept is not None and (
            isinstance(max_kept, bool) or not isinstance(max_kept, int) or not 1 <= max_kept <= num_mod
        ):
            raise ValueError(f"max_kept must be None or an int in [1, {num_mod}], got {max_kept!r}")
        super().__init__(prob=float(prob))
        self.max_kept = num_mod if max_kept is None else max_kept
        self.distribution = self._validate_distribution(distribution, self.max_kept, self.spec)
        self.table = _build_table(self.distribution, self.max_kept, self.spec)
        self.cdf = _cdf_table(self.table)
        self.feasible = self.table.sum(axis=1) > 0
        self._u = 0.0
        self._kept_code = 0
        self._device_tables: dict[tuple[str, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    @staticmethod
    def _validate_distribution(distribution: Any, max_kept: int, spec: ModalitySpec = BRATS) -> str | dict[str, float]:
        if isinstance(distribution, str):
            if distribution not in DROPOUT_DISTRIBUTIONS:
                raise ValueError(
                    f"unknown dropout distribution {distribution!r}; use one of {DROPOUT_DISTRIBUTIONS} "
                    "or a mapping {subset_name: weight}"
                )
            return distribution
        if not isinstance(distribution, Mapping):
            raise TypeError(
                f"distribution must be a name from {DROPOUT_DISTRIBUTIONS} or a mapping, "
                f"got {type(distribution).__name__}"
            )
        if not distribution:
            raise ValueError("distribution mapping is empty; give at least one {subset_name: weight}")
        out: dict[str, float] = {}
        for name, weight in distribution.items():
            try:
                canon = spec.subset_name(spec.parse_subset(name))
            except ValueError as e:
                raise ValueError(f"unknown subset name {name!r} in dropout distribution: {e}") from None
            if canon in out:
                raise ValueError(f"subset {canon!r} appears twice in the dropout distribution")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise ValueError(f"weight of subset {name!r} must be a finite number, got {weight!r}")
            if weight < 0:
                raise ValueError(f"weight of subset {name!r} must be >= 0, got {weight}")
            out[canon] = float(weight)
        usable = [k for k, w in out.items() if w > 0 and len(spec.parse_subset(k)) <= max_kept]
        if not usable:
            raise ValueError(
                f"no subset in the dropout distribution has a positive weight and at most max_kept={max_kept} "
                f"sequences: {out}"
            )
        return out

    def probabilities(self, available: Sequence[bool] | np.ndarray | torch.Tensor) -> dict[str, float]:
        """Subset name -> probability of being kept given the availability mask, when dropout fires."""
        row = self.table[mask_to_code(available, self.spec)]
        return {
            self.spec.mask_to_subset(code_to_mask(c, self.spec)): float(row[c])
            for c in range(1, 1 << self.spec.num_modalities)
            if row[c] > 0
        }

    def randomize(self, data: Any = None) -> None:
        """Draw whether to fire and which subset to keep; ``data`` is the ``(M,)`` availability mask."""
        fire_u, self._u = self.R.rand(2)
        self._do_transform = bool(fire_u < self.prob)
        if data is None:
            return
        avail = mask_to_code(data, self.spec)
        if not self._do_transform:
            self._kept_code = avail
            return
        if not self.feasible[avail]:
            raise ValueError(self._infeasible_message(avail))
        self._kept_code = int(np.searchsorted(self.cdf[avail], self._u, side="right"))

    def _infeasible_message(self, avail: int) -> str:
        mods = [m for m, f in zip(self.spec.names, code_to_mask(avail, self.spec), strict=True) if f]
        if not mods:
            return "modality dropout: no sequence available in this sample"
        return (
            f"modality dropout: no subset of the available sequences {mods} is allowed by distribution "
            f"{self.distribution!r} with max_kept={self.max_kept}"
        )

    def __call__(
        self, img: NdarrayOrTensor, mask: Any = None, randomize: bool = True
    ) -> tuple[NdarrayOrTensor, torch.Tensor]:
        """Drop sequences of one sample.

        Args:
            img: ``(C, ...)`` image in modality order (``C = spec.total_channels``, 4 for BraTS).
            mask: ``(M,)`` availability; None derives it from the non-zero channels.
            randomize: draw a new subset (False reuses the last draw, e.g. for a second key).

        Returns:
            ``(image, mask)``: image with dropped channels zeroed and the torch.bool ``(M,)`` updated mask.
        """
        _check_channels(img, spec=self.spec)
        avail = _as_bool_mask(mask, img, self.spec)
        if randomize:
            self.randomize(avail)
        if not self._do_transform:
            return img, avail
        kept = torch.from_numpy(code_to_mask(self._kept_code, self.spec)).to(avail.device) & avail
        return _zero_channels(img, kept, self.spec), kept

    def device_tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """CDF ``(2**M, 2**M)`` and feasibility ``(2**M,)`` tables on ``device`` (cached)."""
        dtype = torch.float32 if device.type == "mps" else torch.float64
        key = (str(device), dtype)
        if key not in self._device_tables:
            self._device_tables[key] = (
                torch.as_tensor(self.cdf, dtype=dtype, device=device),
                torch.as_tensor(self.feasible, dtype=torch.bool, device=device),
            )
        return self._device_tables[key]


def drop_modalities_batch(
    images: torch.Tensor,
    masks: torch.Tensor,
    transform: ModalityDropout,
    check: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply modality dropout to a batch on its own device (e.g. GPU, inside a training step).

    Random numbers come from ``transform``'s host RNG and are sampled against device-side CDF tables. Per-sample
    granularity: two per sample (the same stream as sequential single-sample calls), no device-to-host copy. Per-batch
    granularity: two per batch, one subset drawn from the sequences all samples have, applied to every sample; one
    host sync checks that they share a sequence (otherwise the batch falls back to per-sample draws).

    Args:
        images: ``(B, C, ...)`` in modality order (``C`` = the dropout's ``spec.total_channels``, 4 for BraTS).
        masks: ``(B, M)`` availability (bool or 0/1) on any device.
        transform: the configured dropout transform.
        check: raise ValueError when a sample that drew "drop" has no feasible subset (costs one host sync);
            with False such samples are left unchanged.

    Returns:
        ``(images, masks)``: new tensors, dropped channels zeroed, masks torch.bool ``(B, M)`` on ``images.device``.
    """
    dropper = transform
    if not isinstance(dropper, ModalityDropout):
        raise TypeError(f"transform must be a ModalityDropout, got {type(transform).__name__}")
    spec = dropper.spec
    if images.ndim < 3 or images.shape[1] != spec.total_channels:
        raise ValueError(f"images must be (B, {spec.total_channels}, ...), got shape {tuple(images.shape)}")
    if masks.shape != (images.shape[0], spec.num_modalities):
        raise ValueError(f"masks must be (B, {spec.num_modalities}) matching images, got shape {tuple(masks.shape)}")
    device = images.device
    avail = masks.to(device=device, dtype=torch.bool)
    batch = images.shape[0]
    if dropper.granularity == "batch":
        dropped = _drop_batch_once(images, avail, dropper)
        if dropped is not None:
            return dropped
    draws = dropper.R.rand(batch, 2)
    fire_host = draws[:, 0] < dropper.prob
    if not fire_host.any():
        return images, avail
    cdf, feasible = dropper.device_tables(device)
    bits = 1 << torch.arange(spec.num_modalities, device=device)
    codes = (avail.long() * bits).sum(dim=1)
    u = torch.as_tensor(draws[:, 1], dtype=cdf.dtype).to(device, non_blocking=True)
    fire = torch.as_tensor(fire_host).to(device, non_blocking=True)
    chosen = (cdf[codes] <= u[:, None]).sum(dim=1)  # index of the first CDF entry above u
    ok = feasible[codes]
    if check and bool((fire & ~ok).any()):
        bad = torch.nonzero(fire & ~ok).flatten().tolist()
        raise ValueError(
            f"modality dropout: batch rows {bad} have no subset allowed by distribution {dropper.distribution!r} "
            f"with max_kept={dropper.max_kept} among their available sequences"
        )
    new_codes = torch.where(fire & ok, chosen, codes)
    new_masks = ((new_codes[:, None] & bits) > 0) & avail
    # rows that did not fire are returned untouched (as in the single-sample path)
    keep = _per_channel(new_masks | ~(fire & ok)[:, None], spec)
    return images.masked_fill(~keep.reshape(*keep.shape, *([1] * (images.ndim - 2))), 0), new_masks


def _per_channel(keep: torch.Tensor, spec: ModalitySpec) -> torch.Tensor:
    """``(B, M)`` per-modality flags as ``(B, C)`` per-channel flags (the same tensor with one channel each)."""
    if spec.total_channels == spec.num_modalities:
        return keep
    return keep[:, torch.tensor(spec.channel_index, device=keep.device)]


def _drop_batch_once(
    images: torch.Tensor, avail: torch.Tensor, dropper: ModalityDropout
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """One subset for the whole batch, drawn from the sequences all samples share; None if they share none."""
    device = images.device
    bits = 1 << torch.arange(dropper.spec.num_modalities, device=device)
    common = (avail.all(dim=0).long() * bits).sum()
    cdf, feasible = dropper.device_tables(device)
    if not bool(feasible[common]):  # host sync: samples sharing no sequence cannot share one subset
        return None
    fire_u, u = dropper.R.rand(2)
    if not fire_u < dropper.prob:
        return images, avail
    chosen = (cdf[common] <= float(u)).sum()
    kept = ((chosen & bits) > 0)[None].expand_as(avail) & avail
    keep = _per_channel(kept, dropper.spec)
    return images.masked_fill(~keep.reshape(*keep.shape, *([1] * (images.ndim - 2))), 0), kept


# Own transform: no MONAI transform zeroes channels from a per-sample boolean vector.
class MaskMissingModalities(Transform):
    """Re-zero channels whose availability is False (e.g. after intensity augmentation shifted them).

    ``__call__(img (C, ...), mask (M,)) -> img`` with the channels of unavailable modalities set to 0.

    Args:
        modalities: the :class:`~lckd_med.modalities.ModalitySpec` of the image (``None`` = BraTS).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, modalities: ModalitySpec | Mapping[str, Any] | None = None) -> None:
        self.spec = spec_of(modalities)

    def __call__(self, img: NdarrayOrTensor, mask: Any) -> NdarrayOrTensor:
        _check_channels(img, spec=self.spec)
        return _zero_channels(img, _as_bool_mask(mask, spec=self.spec), self.spec)


class MaskMissingModalitiesd(MapTransform):
    """Dictionary version of :class:`MaskMissingModalities`; a sample without ``mask_key`` is returned unchanged.

    Args:
        keys: image keys (``(C, ...)``).
        mask_key: availability mask key.
        allow_missing_keys: skip image keys absent from the data.
        modalities: the :class:`~lckd_med.modalities.ModalitySpec` of the image (``None`` = BraTS).
    """

    def __init__(
        self,
        keys: KeysCollection = IMAGE_KEY,
        mask_key: str = MASK_KEY,
        allow_missing_keys: bool = False,
        modalities: ModalitySpec | Mapping[str, Any] | None = None,
    ):
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.masker = MaskMissingModalities(modalities)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if d.get(self.mask_key) is None:
            return d
        for key in self.key_iterator(d):
            d[key] = self.masker(d[key], d[self.mask_key])
        return d
