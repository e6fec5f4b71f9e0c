"""The LCKD reference's intensity normalisation (BraTSDataSet.truncate of billhhh/LCKD@5ba51b5) on constructed
volumes whose histogram makes the expected threshold and statistics known by hand."""

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
    histogram_tail_threshold,
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
