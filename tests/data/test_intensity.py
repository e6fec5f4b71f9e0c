"""The LCKD reference's intensity normalisation (BraTSDataSet.truncate of billhhh/LCKD@5ba51b5) on constructed
volumes whose histogram makes the expected threshold and statistics known by hand; RFNet's / mmFormer's
(preprocess.py) crop box and z-score, by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from lckd_med.data.intensity import (
    HISTOGRAM_MIN_COUNT,
    CornerZScore,
    CornerZScored,
    HistogramTailClip,
    HistogramTailClipd,
    PublishedBrainCrop,
    PublishedZScore,
    PublishedZScored,
    histogram_tail_threshold,
    published_brain_box,
)


def volume(background: float = 0.0) -> np.ndarray:
    """1000 background voxels (corner included), 50 voxels at each of 1..100, a thin tail: 49 at 150, 10 at 1000."""
    values = [background] * 1000 + [v for v in range(1, 101) for _ in range(50)] + [150] * 49 + [1000] * 10
    return np.asarray(values, dtype=np.float32).reshape(1, 1, -1)


def test_threshold_is_the_last_bin_with_50_voxels():
    assert HISTOGRAM_MIN_COUNT == 50
    # int(max) = 1000 bins of width 1 over [0, 1000]: bin 100 holds the 50 voxels of 100, bin 150 only 49
    assert histogram_tail_threshold(volume()) == 100.0
    tail = volume()
    tail[tail == 150] = 140  # still 49 voxels: ignored
    assert histogram_tail_threshold(tail) == 100.0
    more = np.concatenate([volume().ravel(), [150.0]]).reshape(1, 1, -1)  # now 50 voxels at 150
    assert histogram_tail_threshold(more) == 150.0


def test_clip_then_zscore_over_non_corner_voxels():
    x = volume(background=0.0)[None]  # (C=1, ...)
    clipped = HistogramTailClip()(x)
    assert clipped.max() == 100.0 and np.count_nonzero(clipped == 100.0) == 50 + 49 + 10
    out = CornerZScore()(clipped)
    fg = x[0] != 0
    ref = np.minimum(x[0][fg].astype(np.float64), 100.0)
    np.testing.assert_allclose(out[0][fg], (ref - ref.mean()) / ref.std(), rtol=1e-6)
    assert np.all(out[0][~fg] == 0)


def test_background_is_read_at_the_corner_not_assumed_zero():
    x = volume(background=7.0)[None]  # a scanner background of 7: those voxels become 0, the rest is z-scored
    out = CornerZScore()(x)
    fg = x[0] != 7.0
    assert np.all(out[0][~fg] == 0) and abs(out[0][fg].mean()) < 1e-6 and out[0][fg].std() == pytest.approx(1, 1e-5)


def test_missing_and_degenerate_channels_are_left_alone():
    x = np.stack([np.zeros((4, 4, 4), np.float32), np.full((4, 4, 4), 0.5, np.float32)])  # missing; max < 1
    np.testing.assert_array_equal(HistogramTailClip()(x), x)
    np.testing.assert_array_equal(CornerZScore()(x), np.zeros_like(x))  # no foreground voxel anywhere


def test_dictionary_versions_keep_metatensors_and_dtype():
    img = MetaTensor(torch.as_tensor(volume()[None]), affine=torch.eye(4) * 2)
    d = CornerZScored("image")(HistogramTailClipd("image")({"image": img}))
    assert isinstance(d["image"], MetaTensor) and d["image"].dtype == torch.float32
    assert torch.equal(d["image"].affine, img.affine)


@pytest.mark.parametrize("min_count", [0, -1, 2.5, True])
def test_bad_min_count(min_count):
    with pytest.raises(ValueError, match="min_count"):
        HistogramTailClip(min_count)


# ------------------------------------------------------------------------------------ RFNet / mmFormer preprocess.py

# brain extent (first, last non-zero index) on a 240 x 240 x 155 volume per axis -> the published crop [start, end)
BOX_TABLE = [
    ((30, 199), 240, (30, 199)),  # extent 169 >= 128: not widened, the last brain slice (199) is dropped
    ((100, 150), 240, (61, 190)),  # extent 50: e = int(78 / 2) = 39 -> [100 - 39, 150 + 39 + 1) = 129 voxels
    ((99, 150), 240, (61, 189)),  # extent 51: e = int(77 / 2) = 38 -> [99 - 38, 150 + 38 + 1) = 128 voxels
    ((0, 50), 155, (0, 129)),  # widened below 0 (-39): shifted to start at 0, end 90 + 39
    ((120, 154), 155, (73, 155)),  # widened past the end (154 + 48 = 202): clipped to the volume as numpy slices
    ((10, 138), 155, (10, 138)),  # extent exactly 128: not widened
]


@pytest.mark.parametrize("extent, size, expected", BOX_TABLE)
def test_published_brain_box_by_hand(extent, size, expected):
    vol = np.zeros((2, 4, 3, size), dtype=np.float32)
    vol[1, 2, 1, extent[0]] = 5.0  # the brain's first and last voxels on the last axis, in different sequences
    vol[0, 1, 2, extent[1]] = 0.5
    start, end = published_brain_box(vol)
    assert (start[-1], end[-1]) == expected
    assert (start[0], end[0]) == (0, 4) and (start[1], end[1]) == (0, 3)  # short axes: widened, clipped to the volume


def test_published_brain_box_of_an_empty_volume_is_the_whole_volume():
    assert published_brain_box(np.zeros((1, 5, 6, 7))) == ([0, 0, 0], [5, 6, 7])


def test_published_crop_is_invertible():
    img = MetaTensor(torch.zeros(1, 200, 3, 3))
    img[0, 20, 1, 1], img[0, 170, 1, 1] = 1.0, 2.0
    crop = PublishedBrainCrop()
    cropped = crop(img)
    assert tuple(cropped.shape) == (1, 150, 3, 3)  # [20, 170): the last brain voxel is outside, as published
    back = crop.inverse(cropped)
    assert tuple(back.shape) == (1, 200, 3, 3) and float(back[0, 20, 1, 1]) == 1.0 and float(back.sum()) == 1.0


def test_published_zscore_by_hand():
    """mask = sum over sequences > 0 (voxels 1, 2, 4, 5); each sequence z-scored with the mask's mean and population
    std, every voxel (background included) transformed."""
    a = np.array([0, 2, 4, 0, 0, 6, 0, 0], dtype=np.float32)  # on the mask: 2, 4, 0, 6 -> mean 3, std sqrt(5)
    b = np.array([0, 0, 1, 0, 3, 0, 0, 0], dtype=np.float32)  # on the mask: 0, 1, 3, 0 -> mean 1, std sqrt(1.5)
    missing = np.zeros(8, dtype=np.float32)  # a missing sequence: zero spread, stays zero
    img = np.stack([a, b, missing]).reshape(3, 2, 2, 2)
    out = PublishedZScore()(img)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0].ravel(), (a - 3) / np.sqrt(5), rtol=1e-6)
    np.testing.assert_allclose(out[1].ravel(), (b - 1) / np.sqrt(1.5), rtol=1e-6)
    assert float(out[0].ravel()[0]) == pytest.approx(-3 / np.sqrt(5))  # background is -mean / std, not 0
    np.testing.assert_array_equal(out[2], 0)
    as_tensor = PublishedZScored(keys="image")({"image": MetaTensor(torch.from_numpy(img))})["image"]
    assert isinstance(as_tensor, MetaTensor)
    np.testing.assert_allclose(as_tensor.numpy(), out)
