"""Intensity normalisations of published code that MONAI's transforms do not give: the LCKD reference's and the
RFNet / mmFormer one.

**LCKD reference** (``BraTSDataSet.truncate``): clip the histogram tail, then z-score every voxel that differs from
the background value read at the volume's corner.

Per sequence, on the whole volume as stored (no brain-box crop):

1. :class:`HistogramTailClip`: ``hist = numpy.histogram(x, bins=int(x.max()))``; the threshold is the *index* of
   the last bin holding at least ``min_count`` (50) voxels, and every voxel at or above it becomes it. With the
   volume's minimum at 0 and ``int(max)`` bins each bin is about one intensity unit wide, so the index is (close
   to) that bin's lower edge in intensity units -- the reference's arithmetic, kept as it is.
2. :class:`CornerZScore`: ``background = x[0, 0, 0]`` (the first voxel in storage order); the other voxels are
   centred on their mean and divided by their standard deviation (population, as ``numpy.std``); background
   voxels become 0.

Where the reference would fail these transforms leave the channel alone, so a case never crashes a run: a channel
whose maximum is below 1 (``bins = 0``: an all-zero, i.e. missing, sequence) or with no bin of ``min_count`` voxels
is not clipped; a channel with no foreground voxel, or one of zero spread, is returned as zeros.

MONAI's ``ClipIntensityPercentiles`` clips at percentiles, not at a histogram count, and ``NormalizeIntensity``
picks its foreground as ``!= 0`` rather than ``!=`` a corner value, hence these two transforms. Run them before
``Orientationd`` so the corner is the file's own first voxel, as in the reference.

**RFNet / mmFormer** (the same ``preprocess.py`` in both: dyh127/RFNet ``preprocess.py:10-47,64-66`` at 1e475fa,
YaoZhang93/mmFormer ``mmformer/preprocess.py:15-52,72-74`` at b18663a), per case, in this order:

1. :class:`PublishedBrainCropd`: the box of the voxels where the maximum over the sequences is non-zero; an axis
   whose box is shorter than 128 voxels (``max - min < 128``) is widened: ``e = int((128 - (max - min)) / 2)``,
   ``max += e + 1``, ``min -= e``, then shifted to start at 0 if ``min < 0``; the crop is the slice ``[min, max)``
   (clipped to the volume), so an axis that was not widened loses its last brain slice -- the published arithmetic,
   kept as it is (:func:`published_brain_box`).
2. :class:`PublishedZScore`: the brain mask is ``sum over the sequences > 0`` (on the crop); every sequence becomes
   ``(x - mean) / std`` with the mean and (population, ``numpy``) standard deviation of its voxels inside the mask,
   applied to **every** voxel of the crop (background becomes ``-mean / std``, not 0). Computed with the same
   ``numpy`` float32 operations as the published code. A sequence with no spread inside the mask (a missing, all-zero
   sequence; the published code would divide by zero) becomes zeros. With a missing sequence the mask is the sum of
   the present ones (the published test data always held the four, the network masked the missing one).

MONAI's ``NormalizeIntensity(nonzero=True)`` leaves zeros at 0 and takes each channel's own non-zero voxels, and
``CropForeground`` has no "widen to 128 with this arithmetic" rule, hence these two.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import CropForeground, CropForegroundd, MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type

__all__ = [
    "HISTOGRAM_MIN_COUNT",
    "histogram_tail_threshold",
    "HistogramTailClip",
    "HistogramTailClipd",
    "CornerZScore",
    "CornerZScored",
    "PUBLISHED_MIN_BOX",
    "published_brain_box",
    "PublishedBrainCrop",
    "PublishedBrainCropd",
    "PublishedZScore",
    "PublishedZScored",
]

#: Smallest side of the RFNet / mmFormer brain crop (``sup_128``, RFNet preprocess.py:10-19).
PUBLISHED_MIN_BOX = 128
#: Voxels the top kept histogram bin must hold (the reference's ``Hist >= 50``).
HISTOGRAM_MIN_COUNT = 50


def histogram_tail_threshold(volume: np.ndarray, min_count: int = HISTOGRAM_MIN_COUNT) -> float | None:
    """The reference's clipping threshold of one volume, or ``None`` where it is not defined.

    Args:
        volume: one sequence, any shape.
        min_count: voxels the top kept bin must hold.

    Returns:
        the index of the last of ``int(max)`` histogram bins holding ``>= min_count`` voxels, as a float; ``None``
        when ``int(max) < 1`` or no bin holds ``min_count`` voxels.
    """
    x = np.asarray(volume)
    bins = int(x.max()) if x.size else 0
    if bins < 1:
        return None
    hist, _ = np.histogram(x, bins=bins)
    kept = np.flatnonzero(hist >= min_count)
    return float(kept[-1]) if kept.size else None


def _check_min_count(min_count: int) -> int:
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"min_count must be a positive int, got {min_count!r}")
    return min_count


class HistogramTailClip(Transform):
    """Clip each channel of ``(C, *S)`` at its :func:`histogram_tail_threshold` (see the module docstring).

    Args:
        min_count: voxels the top kept bin must hold (50 in the reference).

    Raises:
        ValueError: ``min_count`` not a positive int.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, min_count: int = HISTOGRAM_MIN_COUNT) -> None:
        self.min_count = _check_min_count(min_count)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        arr = np.asarray(img.detach().cpu() if isinstance(img, torch.Tensor) else img)
        out = arr.copy()
        for c in range(arr.shape[0]):
            threshold = histogram_tail_threshold(arr[c], self.min_count)
            if threshold is not None:
                np.minimum(out[c], np.asarray(threshold, dtype=out.dtype), out=out[c])
        return convert_to_dst_type(out, img)[0]


class CornerZScore(Transform):
    """Z-score each channel of ``(C, *S)`` over the voxels that differ from its first voxel; those become 0.

    Statistics are computed in float64 (as the reference's numpy arithmetic), the result has the input's dtype.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        arr = np.asarray(img.detach().cpu() if isinstance(img, torch.Tensor) else img)
        out = np.zeros(arr.shape, dtype=np.float64)
        for c in range(arr.shape[0]):
            x = arr[c].astype(np.float64)
            fg = x != x.flat[0]
            if not fg.any():
                continue
            centred = x[fg] - x[fg].mean()
            std = centred.std()
            if std > 0:
                out[c][fg] = centred / std
        return convert_to_dst_type(out.astype(arr.dtype if arr.dtype.kind == "f" else np.float32), img)[0]


class HistogramTailClipd(MapTransform):
    """Dictionary version of :class:`HistogramTailClip`."""

    backend = HistogramTailClip.backend

    def __init__(
        self, keys: KeysCollection, min_count: int = HISTOGRAM_MIN_COUNT, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.clipper = HistogramTailClip(min_count)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.clipper(d[key])
        return d


class CornerZScored(MapTransform):
    """Dictionary version of :class:`CornerZScore`."""

    backend = CornerZScore.backend

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normaliser = CornerZScore()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normaliser(d[key])
        return d


def published_brain_box(image: np.ndarray | torch.Tensor) -> tuple[list[int], list[int]]:
    """The RFNet / mmFormer crop box of one case (see the module docstring; RFNet ``preprocess.py:10-37``).

    Args:
        image: ``(C, *S)`` sequences (any number of spatial axes).

    Returns:
        ``(start, end)`` per spatial axis, ``end`` exclusive and within the volume; the whole volume when no voxel is
        non-zero.
    """
    arr = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image)
    shape = arr.shape[1:]
    nonzero = np.nonzero(np.amax(arr, axis=0) != 0)
    if nonzero[0].size == 0:
        return [0] * len(shape), [int(n) for n in shape]
    start, end = [], []
    for axis, size in enumerate(shape):
        lo, hi = int(nonzero[axis].min()), int(nonzero[axis].max())
        if hi - lo < PUBLISHED_MIN_BOX:
            widen = int((PUBLISHED_MIN_BOX - (hi - lo)) / 2)
            hi, lo = hi + widen + 1, lo - widen
        if lo < 0:
            hi, lo = hi - lo, 0
        start.append(lo)
        end.append(min(hi, int(size)))
    return start, end


class PublishedBrainCrop(CropForeground):
    """MONAI's ``CropForeground`` (invertible, ``Invertd`` pads the crop back) with the box of
    :func:`published_brain_box`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_smaller=True, **kwargs)

    def compute_bounding_box(self, img: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        start, end = published_brain_box(img)
        return np.asarray(start, dtype=np.int64), np.asarray(end, dtype=np.int64)


class PublishedBrainCropd(CropForegroundd):
    """Dictionary version of :class:`PublishedBrainCrop`: the box is computed on ``source_key`` and every key is
    cropped to it."""

    def __init__(self, keys: KeysCollection, source_key: str, allow_missing_keys: bool = False) -> None:
        super().__init__(
            keys,
            source_key=source_key,
            allow_smaller=True,
            start_coord_key=None,
            end_coord_key=None,
            allow_missing_keys=allow_missing_keys,
        )
        self.cropper = PublishedBrainCrop()


class PublishedZScore(Transform):
    """Z-score every channel of ``(C, *S)`` over the mask ``sum over channels > 0``, applied to every voxel (see the
    module docstring; RFNet ``preprocess.py:39-47``). float32 numpy arithmetic, as the published code; a channel of
    zero spread inside the mask (or an empty mask) becomes zeros."""

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        vol = np.array(img.detach().cpu() if isinstance(img, torch.Tensor) else img, dtype=np.float32)
        mask = vol.sum(0) > 0
        for c in range(vol.shape[0]):
            x = vol[c, ...]
            y = x[mask]
            std = y.std() if y.size else np.float32(0)
            vol[c, ...] = (x - y.mean()) / std if std > 0 else 0.0
        return convert_to_dst_type(vol, img)[0]


class PublishedZScored(MapTransform):
    """Dictionary version of :class:`PublishedZScore`."""

    backend = PublishedZScore.backend

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normaliser = PublishedZScore()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normaliser(d[key])
        return d
