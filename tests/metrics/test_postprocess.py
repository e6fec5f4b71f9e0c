"""The LCKD reference post-processing (postprocess.py of billhhh/LCKD@5ba51b5) on constructed label maps.

The constructed case below was also run through the reference's ``continues_region_extract`` (outside this
repository, with scikit-learn's k-means standing in for OpenCV's): it returned exactly ``expected`` below.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from lckd_med.metrics.postprocess import kmeans_1d, reference_postprocess


def constructed() -> tuple[np.ndarray, np.ndarray, dict[str, tuple[slice, ...]]]:
    """Four whole-tumour components (BraTS 2018 labels) and a T1ce volume (axis 2 = slices)."""
    lab = np.zeros((64, 64, 48), np.int16)
    t1ce = np.zeros(lab.shape, np.float32)
    rng = np.random.default_rng(0)
    boxes = {
        "a": (slice(5, 25), slice(5, 25), slice(26, 46)),  # oedema in two T1ce groups, NCR core, 3 ET voxels
        "a_dark": (slice(5, 25), slice(5, 15), slice(26, 46)),
        "b": (slice(56, 61), slice(56, 61), slice(30, 32)),  # 50 voxels < min(2000, 0.1 x 8000): removed
        "c": (slice(40, 50), slice(5, 15), slice(11, 21)),  # 1000 voxels, but its top slice 20 <= 25: removed
        "d": (slice(40, 52), slice(40, 50), slice(30, 40)),  # oedema + 100 ET: too much ET for the k-means step
    }
    lab[boxes["a"]] = 2
    t1ce[boxes["a_dark"]] = 100 + rng.normal(0, 3, (20, 10, 20))
    t1ce[5:25, 15:25, 26:46] = 300 + rng.normal(0, 3, (20, 10, 20))
    lab[12:18, 12:18, 33:39] = 1
    t1ce[12:18, 12:18, 33:39] = 50
    lab[14, 14, 35:38] = 4
    t1ce[14, 14, 35:38] = 500
    lab[boxes["b"]] = 2
    lab[boxes["c"]] = 2
    lab[boxes["d"]] = 2
    lab[44:49, 42:47, 33:37] = 4
    t1ce[(lab == 2) & (t1ce == 0)] = 200
    return lab, t1ce, boxes


def test_components_kmeans_and_et_rule_as_the_reference():
    lab, t1ce, boxes = constructed()
    expected = lab.copy()
    expected[boxes["b"]] = 0
    expected[boxes["c"]] = 0
    dark_oedema = np.zeros(lab.shape, bool)
    dark_oedema[boxes["a_dark"]] = True
    expected[dark_oedema & (lab == 2)] = 1  # k-means: the middle T1ce cluster of A's oedema becomes NCR
    expected[expected == 4] = 1  # 103 ET voxels < 500: NCR
    out = reference_postprocess(lab, t1ce)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == lab.dtype and np.count_nonzero(lab != constructed()[0]) == 0  # input untouched


def test_without_t1ce_no_kmeans_and_large_et_is_kept():
    lab, _, boxes = constructed()
    lab[30:40, 30:40, 30:40] = 4  # 1000 ET voxels in their own component: kept, and ET >= 500 stays ET
    out = reference_postprocess(lab, None)
    expected = lab.copy()
    expected[boxes["b"]] = 0
    expected[boxes["c"]] = 0
    np.testing.assert_array_equal(out, expected)


def test_brats2023_labels_and_coarser_grid():
    lab, t1ce, boxes = constructed()
    lab23 = np.where(lab == 4, 3, lab).astype(lab.dtype)
    out = reference_postprocess(lab23, t1ce, convention="brats2023")
    want = reference_postprocess(lab, t1ce)
    np.testing.assert_array_equal(out, np.where(want == 4, 3, want))
    # on a 2 mm grid a voxel holds 8 mm^3 and a slice is 2 mm: the size limit is 250 voxels (B, 50, still goes),
    # C's top slice 20 lies 40 mm up (kept), and 3 + 100 ET voxels (824 mm^3 >= 500) stay ET
    coarse = reference_postprocess(lab, None, spacing=(2.0, 2.0, 2.0))
    assert np.count_nonzero(coarse[boxes["b"]]) == 0 and np.count_nonzero(coarse[boxes["c"]]) == 1000
    assert np.count_nonzero(coarse == 4) == 103


@pytest.mark.parametrize(
    ("labels", "t1ce", "match"),
    [(np.zeros((4, 4)), None, "3-D"), (np.zeros((4, 4, 4)), np.zeros((4, 4, 3)), "shape")],
)
def test_bad_inputs(labels, t1ce, match):
    with pytest.raises(ValueError, match=match):
        reference_postprocess(labels, t1ce)


def test_kmeans_1d_is_the_optimal_partition():
    rng = np.random.default_rng(3)
    values = np.round(rng.gamma(2.0, 10.0, 60))
    centres, labels = kmeans_1d(values, 3)

    def sse(assign: np.ndarray) -> float:
        return sum(((values[assign == k] - values[assign == k].mean()) ** 2).sum() for k in set(assign.tolist()))

    uniq = np.unique(values)
    best = min(  # every split of the sorted distinct values into 3 intervals
        sse(np.searchsorted(uniq[[i, j]], values, side="right"))
        for i, j in itertools.combinations(range(1, len(uniq)), 2)
    )
    assert sse(labels) == pytest.approx(best) and np.all(np.diff(centres) >= 0)
    assert kmeans_1d(np.zeros(5), 3)[1].tolist() == [0] * 5  # one distinct value: one cluster


def test_component_without_oedema_is_not_clustered():
    """The reference would cluster an all-zero volume here and turn every voxel into NCR; nothing changes instead."""
    lab = np.zeros((32, 32, 48), np.int16)
    lab[8:18, 8:18, 30:40] = 1  # NCR only: every k-means condition holds, but there is no oedema to cluster
    t1ce = np.where(lab > 0, 80.0, 0.0)
    np.testing.assert_array_equal(reference_postprocess(lab, t1ce), lab)
