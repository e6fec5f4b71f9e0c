"""Transform chains for training and evaluation on BraTS-style cases with possibly missing sequences.

Input sample dicts are datalist entries: the four modality path keys (``MODALITIES``; null = missing on disk),
``"label"`` (path) and ``"case_id"``. Outputs: ``"image"`` ``(4, H, W, D)`` float32 (modality order, missing
channels zero), ``"modality_mask"`` torch.bool ``(4,)``, ``"label"`` ``(3, H, W, D)`` float32 in ``REGIONS``
order (ET, TC, WT).

The training chain is split into a deterministic prefix (load, reorient, crop to the brain, normalise, convert
labels, pad) and a random suffix starting with the patch crop, so MONAI ``CacheDataset`` caches exactly the
prefix. The evaluation chain keeps MetaTensor metadata so ``Invertd`` maps predictions back to the input geometry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureTyped,
    NormalizeIntensityd,
    Orientationd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SpatialPadd,
)

from lckd_med.constants import LabelConvention, label_convention
from lckd_med.data.transforms import (
    IMAGE_KEY,
    LABEL_KEY,
    MASK_KEY,
    LabelToRegionsd,
    LoadModalitiesd,
    MaskMissingModalitiesd,
)
from lckd_med.modalities import BRATS, ModalitySpec, spec_of

__all__ = [
    "AXCODES",
    "normalize_roi_size",
    "train_transforms_split",
    "train_transforms",
    "eval_transforms",
]

#: Working orientation of every pipeline (BraTS files are LPS on disk).
AXCODES = "RAS"


def normalize_roi_size(roi_size: int | Sequence[int], spatial_dims: int = 3) -> tuple[int, ...]:
    """``roi_size`` as ``spatial_dims`` (3) positive ints (an int means a cube, or a square in 2-D)."""
    if isinstance(roi_size, bool):
        raise TypeError(f"roi_size must be an int or {spatial_dims} ints, got {roi_size!r}")
    if isinstance(roi_size, int):
        roi_size = (roi_size,) * spatial_dims
    try:
        roi = tuple(roi_size)
    except TypeError:
        raise TypeError(f"roi_size must be an int or {spatial_dims} ints, got {roi_size!r}") from None
    if len(roi) != spatial_dims or any(isinstance(r, bool) or not isinstance(r, int) or r <= 0 for r in roi):
        raise ValueError(f"roi_size must be {spatial_dims} positive ints, got {roi_size!r}")
    return roi


def _check_number(name: str, value: object, low: float | None = 0.0, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be in [{low}, {high if high is not None else 'inf'}], got {value}")
    return float(value)


def _loading(
    convention: LabelConvention,
    with_label: bool,
    label_dtype: torch.dtype,
    allow_missing: bool,
    modalities: ModalitySpec = BRATS,
) -> list:
    """Load, reorient to RAS, crop to the brain box, z-score brain voxels per channel, labels -> regions."""
    keys = [IMAGE_KEY, LABEL_KEY] if with_label else [IMAGE_KEY]
    chain = [
        LoadModalitiesd(
            label_key=LABEL_KEY if with_label else None, allow_missing=allow_missing, modalities=modalities
        ),
        # None: axis labels from the MetaTensor space; a 2-D image takes the first two axis codes
        Orientationd(keys=keys, axcodes=AXCODES[: modalities.spatial_dims], labels=None),
        # brain box = voxels > 0 in any sequence (MRI intensities are non-negative before normalisation)
        CropForegroundd(keys=keys, source_key=IMAGE_KEY, allow_smaller=True, start_coord_key=None, end_coord_key=None),
        NormalizeIntensityd(keys=IMAGE_KEY, nonzero=True, channel_wise=True),
    ]
    if with_label:
        chain.append(
            LabelToRegionsd(
                keys=LABEL_KEY, convention=convention, dtype=label_dtype, spatial_dims=modalities.spatial_dims
            )
        )
    return chain


def train_transforms_split(
    roi_size: int | Sequence[int],
    convention: int | str | LabelConvention = "brats2018",
    num_samples: int = 1,
    pos: float = 1.0,
    neg: float = 1.0,
    augment: bool = True,
    flip_prob: float = 0.5,
    intensity_scale: float = 0.1,
    intensity_shift: float = 0.1,
    allow_missing: bool = True,
    track_meta: bool = False,
    modalities: ModalitySpec | Mapping[str, Any] | None = None,
) -> tuple[Compose, Compose]:
    """Training chain as ``(deterministic_prefix, random_suffix)``.

    Prefix: LoadModalitiesd -> Orientationd(RAS) -> CropForegroundd(any non-zero channel) ->
    NormalizeIntensityd(nonzero, channel_wise) -> LabelToRegionsd (uint8, to keep caches small) -> SpatialPadd(roi).
    Suffix: RandCropByPosNegLabeld -> [RandFlipd per axis, RandScaleIntensityd, RandShiftIntensityd] ->
    MaskMissingModalitiesd -> EnsureTyped (image and label float32). Modality dropout is not here: the trainer draws
    it per batch on the device (:func:`lckd_med.data.transforms.drop_modalities_batch`).

    Args:
        roi_size: patch size ``(H, W, D)`` or an int for a cube.
        convention: label convention / BraTS release (ET=4 up to 2022, ET=3 from 2023).
        num_samples: patches per volume (the suffix then returns a list of dicts).
        pos, neg: foreground / background patch-centre ratio of ``RandCropByPosNegLabeld`` (foreground = any
            region).
        augment: add random flips and per-channel intensity scale/shift.
        flip_prob: per-axis flip probability.
        intensity_scale: ``RandScaleIntensityd`` factor range ``(-s, s)``.
        intensity_shift: ``RandShiftIntensityd`` offset range ``(-s, s)`` (in z-score units).
        allow_missing: accept cases with missing sequences.
        track_meta: keep MetaTensors in the output (False gives plain tensors, cheaper in training steps).
        modalities: the :class:`~lckd_med.modalities.ModalitySpec` of the files (``None`` = BraTS): loading,
            flips (one per spatial axis) and masking follow it; ``roi_size`` has its ``spatial_dims``.

    Returns:
        ``(prefix, suffix)``; ``Compose([*prefix.transforms, *suffix.transforms])`` is the full chain.
    """
    spec = spec_of(modalities)
    roi = normalize_roi_size(roi_size, spec.spatial_dims)
    conv = label_convention(convention)
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    pos = _check_number("pos", pos)
    neg = _check_number("neg", neg)
    if pos + neg <= 0:
        raise ValueError("pos and neg cannot both be 0")
    if not isinstance(augment, bool):
        raise TypeError(f"augment must be a bool, got {augment!r}")
    flip_prob = _check_number("flip_prob", flip_prob, 0.0, 1.0)
    intensity_scale = _check_number("intensity_scale", intensity_scale, 0.0)
    intensity_shift = _check_number("intensity_shift", intensity_shift, 0.0)

    keys = [IMAGE_KEY, LABEL_KEY]
    prefix = _loading(conv, with_label=True, label_dtype=torch.uint8, allow_missing=allow_missing, modalities=spec)
    prefix.append(SpatialPadd(keys=keys, spatial_size=roi))

    suffix: list = [
        RandCropByPosNegLabeld(
            keys=keys, label_key=LABEL_KEY, spatial_size=roi, pos=pos, neg=neg, num_samples=num_samples
        )
    ]
    if augment:
        suffix += [RandFlipd(keys=keys, prob=flip_prob, spatial_axis=axis) for axis in range(spec.spatial_dims)]
        suffix += [
            RandScaleIntensityd(keys=IMAGE_KEY, factors=intensity_scale, prob=1.0, channel_wise=True),
            RandShiftIntensityd(keys=IMAGE_KEY, offsets=intensity_shift, prob=1.0, channel_wise=True),
        ]
    suffix.append(MaskMissingModalitiesd(keys=IMAGE_KEY, mask_key=MASK_KEY, modalities=spec))
    suffix.append(EnsureTyped(keys=keys, dtype=torch.float32, track_meta=track_meta))
    return Compose(prefix), Compose(suffix)


def train_transforms(
    roi_size: int | Sequence[int], convention: int | str | LabelConvention = "brats2018", **kwargs: Any
) -> Compose:
    """Full training chain (flat, so ``CacheDataset`` caches everything before ``RandCropByPosNegLabeld``).

    Args: see :func:`train_transforms_split`; every other keyword argument (``num_samples``, ``pos``, ``neg``,
    ``augment``, ...) is passed on to it.

    Returns:
        Compose mapping a datalist entry to a list of ``num_samples`` dicts with ``image`` ``(4, *roi)``,
        ``label`` ``(3, *roi)`` (ET, TC, WT) float32 and ``modality_mask`` ``(4,)`` bool.
    """
    prefix, suffix = train_transforms_split(roi_size, convention=convention, **kwargs)
    return Compose([*prefix.transforms, *suffix.transforms])


def eval_transforms(
    convention: int | str | LabelConvention = "brats2018",
    with_label: bool = True,
    allow_missing: bool = True,
    modalities: ModalitySpec | Mapping[str, Any] | None = None,
) -> Compose:
    """Evaluation / inference chain, invertible with ``monai.transforms.Invertd``.

    LoadModalitiesd -> Orientationd(RAS) -> CropForegroundd -> NormalizeIntensityd -> [LabelToRegionsd] ->
    EnsureTyped (MetaTensors kept). Invert predictions with
    ``Invertd(keys="pred", transform=<this>, orig_keys="image", nearest_interp=True)``: Orientationd and
    CropForegroundd are undone, so a ``(3, H', W', D')`` prediction returns to the input grid and LPS affine.

    Args:
        convention: label convention / BraTS release.
        with_label: load and convert the label (False for unlabelled inference).
        allow_missing: accept cases with missing sequences.
        modalities: the :class:`~lckd_med.modalities.ModalitySpec` of the files (``None`` = BraTS): one file per
            modality with its channels, 2-D or 3-D (see :class:`~lckd_med.data.transforms.LoadModalities`).
    """
    if not isinstance(with_label, bool):
        raise TypeError(f"with_label must be a bool, got {with_label!r}")
    conv = label_convention(convention)
    keys = [IMAGE_KEY, LABEL_KEY] if with_label else [IMAGE_KEY]
    chain = _loading(
        conv,
        with_label=with_label,
        label_dtype=torch.float32,
        allow_missing=allow_missing,
        modalities=spec_of(modalities),
    )
    chain.append(EnsureTyped(keys=keys, dtype=torch.float32, track_meta=True))
    return Compose(chain)
