"""Transform chains for training and evaluation on BraTS-style cases with possibly missing sequences.

Input sample dicts are datalist entries: the four modality path keys (``MODALITIES``; null = missing on disk),
``"label"`` (path) and ``"case_id"``. Outputs: ``"image"`` ``(4, H, W, D)`` float32 (modality order, missing
channels zero), ``"modality_mask"`` torch.bool ``(4,)``, ``"label"`` ``(3, H, W, D)`` float32 in ``REGIONS``
order (ET, TC, WT).

The training chain is split into a deterministic prefix (load, normalise, reorient, [crop to the brain], convert
labels, pad) and a random suffix starting with the patch crop, so MONAI ``CacheDataset`` caches exactly the
prefix. The evaluation chain keeps MetaTensor metadata so ``Invertd`` maps predictions back to the input geometry.

Three named choices (library defaults first: the light pipeline; the LCKD bundle's ``train.json`` picks the
reference's, see ``docs/reproduce.md``):

* ``intensity`` (:data:`INTENSITY_NORMS`): ``"brainbox"`` -- crop to the box of voxels > 0 in any sequence, z-score
  each sequence over its non-zero voxels; ``"reference"`` -- the LCKD reference's (:mod:`lckd_med.data.intensity`):
  histogram-tail clip and z-score over the voxels that differ from the corner voxel, on the whole volume;
  ``"published"`` -- RFNet's and mmFormer's (their ``preprocess.py``, :mod:`lckd_med.data.intensity`): the array in
  BraTS's stored orientation (:data:`PUBLISHED_AXCODES`), the brain box widened to 128 voxels per axis, z-score over
  the brain mask applied to every voxel (what an imported published checkpoint records). Training,
  election, evaluation and inference must use the same one (the bundles store it in the checkpoint's
  ``train_config``; :func:`recipe_intensity` reads it back).
* ``crop`` (:data:`CROP_SAMPLINGS`): ``"posneg"`` -- MONAI ``RandCropByPosNegLabeld`` (``pos`` : ``neg`` patches
  centred on a tumour / a non-tumour voxel); ``"reference"`` -- :class:`~lckd_med.data.crop.ReferenceCropd`.
* ``augmentation`` (:data:`AUGMENTATIONS`): ``"light"`` -- flips and per-channel intensity scale / shift;
  ``"reference"`` -- the reference's batchgenerators chain (:mod:`lckd_med.data.augment`); ``augment=False``
  disables either.
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
from lckd_med.data.augment import reference_augmentation
from lckd_med.data.crop import REFERENCE_MARGINS, ReferenceCropd
from lckd_med.data.intensity import CornerZScored, HistogramTailClipd, PublishedBrainCropd, PublishedZScored
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
    "PUBLISHED_AXCODES",
    "INTENSITY_NORMS",
    "CROP_SAMPLINGS",
    "AUGMENTATIONS",
    "recipe_intensity",
    "normalize_roi_size",
    "train_transforms_split",
    "train_transforms",
    "eval_transforms",
]

#: Working orientation of every pipeline (BraTS files are LPS on disk).
AXCODES = "RAS"
#: Orientation of the ``"published"`` chain: BraTS files are stored LPS and the RFNet / mmFormer code reads their
#: arrays as stored (medpy, ``preprocess.py:59-64``), so their networks learnt that voxel order; reorienting to it
#: is a no-op on BraTS files and puts other files in the order the weights expect.
PUBLISHED_AXCODES = "LPS"
#: Intensity normalisations (library default first): brain-box crop + non-zero z-score, the LCKD reference's, or
#: RFNet's / mmFormer's (``"published"``).
INTENSITY_NORMS: tuple[str, ...] = ("brainbox", "reference", "published")
#: Patch samplers (library default first): MONAI's positive / negative centres, or the reference's law.
CROP_SAMPLINGS: tuple[str, ...] = ("posneg", "reference")
#: Training augmentations (library default first): flips + intensity jitter, or the reference's chain.
AUGMENTATIONS: tuple[str, ...] = ("light", "reference")


def _choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return str(value)


def recipe_intensity(train_config: Mapping[str, Any] | None) -> str:
    """The intensity normalisation a checkpoint's ``train_config`` records (``"brainbox"`` when it records none:
    checkpoints written before the option existed were trained with it).

    Raises:
        ValueError: an unknown value.
    """
    value = (train_config or {}).get("intensity") or INTENSITY_NORMS[0]
    return _choice("train_config intensity", value, INTENSITY_NORMS)


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
    intensity: str = "brainbox",
) -> list:
    """Load, normalise, reorient to RAS, labels -> regions.

    ``"brainbox"``: reorient, crop to the brain box, z-score brain voxels per channel. ``"reference"``: clip and
    z-score per channel on the file's own voxel order (the corner voxel is the file's first), then reorient; no crop.
    ``"published"``: reorient to :data:`PUBLISHED_AXCODES` (LPS, not RAS), crop to the published brain box, z-score
    over the brain mask, every voxel.
    """
    keys = [IMAGE_KEY, LABEL_KEY] if with_label else [IMAGE_KEY]
    chain: list = [
        LoadModalitiesd(label_key=LABEL_KEY if with_label else None, allow_missing=allow_missing, modalities=modalities)
    ]
    if intensity == "reference":
        chain += [HistogramTailClipd(keys=IMAGE_KEY), CornerZScored(keys=IMAGE_KEY)]
    # None: axis labels from the MetaTensor space; a 2-D image takes the first two axis codes
    axcodes = PUBLISHED_AXCODES if intensity == "published" else AXCODES
    chain.append(Orientationd(keys=keys, axcodes=axcodes[: modalities.spatial_dims], labels=None))
    if intensity == "brainbox":
        chain += [
            # brain box = voxels > 0 in any sequence (MRI intensities are non-negative before normalisation)
            CropForegroundd(
                keys=keys, source_key=IMAGE_KEY, allow_smaller=True, start_coord_key=None, end_coord_key=None
            ),
            NormalizeIntensityd(keys=IMAGE_KEY, nonzero=True, channel_wise=True),
        ]
    if intensity == "published":
        chain += [PublishedBrainCropd(keys=keys, source_key=IMAGE_KEY), PublishedZScored(keys=IMAGE_KEY)]
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
    augmentation: str = "light",
    crop: str = "posneg",
    intensity: str = "brainbox",
) -> tuple[Compose, Compose]:
    """Training chain as ``(deterministic_prefix, random_suffix)``.

    Prefix: LoadModalitiesd -> [``intensity="reference"``: HistogramTailClipd -> CornerZScored] -> Orientationd(RAS)
    -> [``"brainbox"``: CropForegroundd(any non-zero channel) -> NormalizeIntensityd(nonzero, channel_wise)] ->
    LabelToRegionsd (uint8, to keep caches small) -> SpatialPadd(roi).
    Suffix: RandCropByPosNegLabeld or ReferenceCropd -> [augmentation: ``"light"``: RandFlipd per axis,
    RandScaleIntensityd, RandShiftIntensityd; ``"reference"``: :func:`~lckd_med.data.augment.reference_augmentation`]
    -> MaskMissingModalitiesd -> EnsureTyped (image and label float32). Modality dropout is not here: the trainer
    draws it per batch on the device (:func:`lckd_med.data.transforms.drop_modalities_batch`).

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
        augmentation: ``"light"`` (flips, intensity scale / shift: ``flip_prob``, ``intensity_scale``,
            ``intensity_shift``) or ``"reference"`` (the LCKD reference's chain; 3-D only).
        crop: ``"posneg"`` (``pos`` / ``neg``) or ``"reference"`` (the LCKD reference's law, margins 15 / 10 / 0 on
            ``H, W, D``).
        intensity: ``"brainbox"``, ``"reference"`` or ``"published"`` (see the module docstring).

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
    augmentation = _choice("augmentation", augmentation, AUGMENTATIONS)
    crop = _choice("crop", crop, CROP_SAMPLINGS)
    intensity = _choice("intensity", intensity, INTENSITY_NORMS)
    if augment and augmentation == "reference" and spec.spatial_dims != 3:
        raise ValueError("augmentation='reference' is the reference's 3-D chain; use 'light' for 2-D data")

    keys = [IMAGE_KEY, LABEL_KEY]
    prefix = _loading(
        conv,
        with_label=True,
        label_dtype=torch.uint8,
        allow_missing=allow_missing,
        modalities=spec,
        intensity=intensity,
    )
    prefix.append(SpatialPadd(keys=keys, spatial_size=roi))

    if crop == "reference":
        sampler = ReferenceCropd(
            keys=keys,
            label_key=LABEL_KEY,
            roi_size=roi,
            margins=REFERENCE_MARGINS[: spec.spatial_dims],
            num_samples=num_samples,
        )
    else:
        sampler = RandCropByPosNegLabeld(
            keys=keys, label_key=LABEL_KEY, spatial_size=roi, pos=pos, neg=neg, num_samples=num_samples
        )
    suffix: list = [sampler]
    if augment and augmentation == "reference":
        suffix += reference_augmentation(IMAGE_KEY, LABEL_KEY, spec.spatial_dims)
    elif augment:
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
    intensity: str = "brainbox",
) -> Compose:
    """Evaluation / inference chain, invertible with ``monai.transforms.Invertd``.

    LoadModalitiesd -> [HistogramTailClipd -> CornerZScored] -> Orientationd(RAS) -> [CropForegroundd ->
    NormalizeIntensityd] -> [LabelToRegionsd] -> EnsureTyped (MetaTensors kept), the bracketed steps as ``intensity``
    says (see the module docstring; use the one the model was trained with). Invert predictions with
    ``Invertd(keys="pred", transform=<this>, orig_keys="image", nearest_interp=True)``: Orientationd and
    CropForegroundd are undone, so a ``(3, H', W', D')`` prediction returns to the input grid and LPS affine.

    Args:
        convention: label convention / BraTS release.
        with_label: load and convert the label (False for unlabelled inference).
        allow_missing: accept cases with missing sequences.
        modalities: the :class:`~lckd_med.modalities.ModalitySpec` of the files (``None`` = BraTS): one file per
            modality with its channels, 2-D or 3-D (see :class:`~lckd_med.data.transforms.LoadModalities`).
        intensity: ``"brainbox"``, ``"reference"`` or ``"published"`` (:data:`INTENSITY_NORMS`).
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
        intensity=_choice("intensity", intensity, INTENSITY_NORMS),
    )
    chain.append(EnsureTyped(keys=keys, dtype=torch.float32, track_meta=True))
    return Compose(chain)
