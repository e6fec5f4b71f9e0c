"""The LCKD reference's patch sampling (BraTSDataSet.locate_bbx_wScale of billhhh/LCKD@5ba51b5): the law over many
draws, the crop-and-resize scale, and the parameters the LCKD bundle's train.json gives it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from lckd_med.data.crop import REFERENCE_MARGINS, ReferenceCropd

SHAPE = (40, 44, 30)
ROI = (16, 16, 8)
MARGINS = (4, 3, 0)
# one voxel per region (ET, TC, WT), away from the borders so a centred crop never has to be shifted
VOXELS = ((18, 20, 14), (20, 22, 15), (22, 24, 16))


def _label(regions=VOXELS) -> np.ndarray:
    label = np.zeros((3, *SHAPE), bool)
    for r, v in enumerate(regions):
        if v is not None:
            label[(r, *v)] = True
    return label


def _cropper(**kw) -> ReferenceCropd:
    t = ReferenceCropd(["image", "label"], "label", ROI, margins=MARGINS, **kw)
    t.set_random_state(seed=0)
    return t


def _within(freq: float, p: float, n: int) -> bool:
    return abs(freq - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_region_or_uniform_law():
    t, label, n = _cropper(scale_prob=0.0), _label(), 4000
    centred = {v: 0 for v in VOXELS}
    starts = []
    for _ in range(n):
        start, end, scaled = t.draw_box(label)
        assert not scaled and tuple(b - a for a, b in zip(start, end, strict=True)) == ROI
        centre = tuple(a + k // 2 for a, k in zip(start, ROI, strict=True))
        if centre in centred:
            centred[centre] += 1
        else:
            starts.append(start)
    # p 0.5 draws one of {ET, TC, WT, none}: each region centres 1/8 of the patches, 3/8 in all
    assert all(_within(c / n, 1 / 8, n) for c in centred.values()), centred
    starts = np.array(starts)
    for axis, (size, margin) in enumerate(zip(SHAPE, MARGINS, strict=True)):
        low, high = margin, size - margin - ROI[axis]  # the reference's randint(margin, n - margin - crop)
        assert starts[:, axis].min() == low and starts[:, axis].max() == high
        # uniform over the integers low..high
        expected = np.full(high - low + 1, len(starts) / (high - low + 1))
        assert stats.chisquare(np.bincount(starts[:, axis] - low, minlength=high - low + 1), expected).pvalue > 1e-3


def test_empty_regions_fall_back_to_uniform():
    t, n = _cropper(scale_prob=0.0), 3000
    label = _label((None, None, VOXELS[2]))  # only WT present: 1/8 of the patches are WT-centred
    hits = sum(tuple(a + k // 2 for a, k in zip(t.draw_box(label)[0], ROI, strict=True)) == VOXELS[2] for _ in range(n))
    assert _within(hits / n, 1 / 8, n)


def test_scale_law_and_crop_sizes():
    roi, n = (100, 100, 50), 3000
    t = ReferenceCropd(["image", "label"], "label", roi, region_prob=0.0)  # uniform starts only: no region search
    t.set_random_state(seed=2)
    label = np.zeros((3, 120, 120, 60), bool)
    factors = []
    for _ in range(n):
        start, end, scaled = t.draw_box(label)
        size = tuple(int(v) for v in np.subtract(end, start))
        if not scaled:
            assert size == roi
            continue
        # int(roi * s), one s for every axis: s lies in [size / roi, (size + 1) / roi) on each axis
        low = max(k / r for k, r in zip(size, roi, strict=True))
        high = min((k + 1) / r for k, r in zip(size, roi, strict=True))
        assert low < high, size
        factors.append(size[0])
    assert _within(len(factors) / n, 0.5, n)
    # s ~ U(0.9, 1.1): int(100 s) uniform over 90..109
    counts = np.bincount(np.array(factors) - 90, minlength=20)
    assert len(counts) == 20 and stats.chisquare(counts).pvalue > 1e-3


def test_scaled_patches_are_resized_to_the_roi():
    t = _cropper(scale_prob=1.0, scale_range=(1.1, 1.1), region_prob=1.0)
    image = torch.rand(2, *SHAPE)
    label = torch.as_tensor(_label()).to(torch.uint8)
    label[2, 10:30, 10:30, 5:25] = 1  # a WT block, so the nearest-neighbour resize has something to keep
    out = t({"image": image, "label": label})
    assert len(out) == 1
    patch = out[0]
    assert patch["image"].shape == (2, *ROI) and patch["label"].shape == (3, *ROI)
    assert set(torch.unique(patch["label"]).tolist()) <= {0, 1} and patch["label"].dtype == torch.uint8
    assert float(patch["image"].min()) >= 0 and float(patch["image"].max()) <= 1  # linear: within the input range


def test_small_volumes_shrink_the_margins_instead_of_failing():
    t = ReferenceCropd(["image", "label"], "label", ROI, margins=(15, 10, 0), num_samples=3)
    t.set_random_state(seed=1)
    label = torch.zeros(3, 18, 17, 8, dtype=torch.uint8)  # just above the ROI: margins 15 / 10 cannot fit
    out = t({"image": torch.rand(1, 18, 17, 8), "label": label})
    assert len(out) == 3 and all(p["image"].shape == (1, *ROI) for p in out)


def test_train_json_gives_the_reference_parameters():
    from monai.bundle import ConfigParser

    from lckd_med.engines.workflow import bundle_dir

    parser = ConfigParser()
    parser.read_config(f"{bundle_dir('lckd')}/train.json")
    parser["label_convention"] = "brats2018"
    crop = parser.get_parsed_content("train#preprocessing").transforms
    crop = next(t for t in crop if isinstance(t, ReferenceCropd))
    # the reference: crop 80x160x160 in (D, H, W); h0 in [15, H - 175], w0 in [10, W - 170], d0 in [0, D - 80];
    # p 0.5 region / none; p 0.5 scale U(0.9, 1.1)
    assert crop.roi_size == (160, 160, 80) and crop.margins == REFERENCE_MARGINS == (15, 10, 0)
    assert (crop.region_prob, crop.scale_prob, crop.scale_range) == (0.5, 0.5, (0.9, 1.1))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"roi_size": (16, 0, 8)}, "roi_size"),
        ({"margins": (1, 2)}, "margins"),
        ({"margins": (1, -2, 0)}, "margins"),
        ({"region_prob": 1.5}, "region_prob"),
        ({"scale_prob": -0.1}, "scale_prob"),
        ({"scale_range": (1.1, 0.9)}, "scale_range"),
        ({"scale_range": (0.0, 1.0)}, "scale_range"),
        ({"num_samples": 0}, "num_samples"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"keys": ["image", "label"], "label_key": "label", "roi_size": ROI, **kwargs}
    with pytest.raises(ValueError, match=match):
        ReferenceCropd(**args)
