"""Tests for lckd_med.metrics.brats: legacy empty rules, HD95 definitions, region masks, ET post-processing."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.distance import cdist

from lckd_med.constants import BRATS_2023, BRATS_LEGACY, ET_MIN_VOXELS, HD95_ONE_EMPTY_MM, REGIONS
from lckd_med.metrics.brats import (
    case_region_metrics,
    directed_max_hd95,
    image_diagonal_mm,
    legacy_dice,
    legacy_hd95,
    postprocess_et,
    region_masks_from_labels,
)

SHAPE = (12, 12, 12)


def _box(lo: tuple[int, int, int], hi: tuple[int, int, int], shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
    return m


def _voxel(*idx: int) -> np.ndarray:
    m = np.zeros(SHAPE, dtype=bool)
    m[idx] = True
    return m


EMPTY = np.zeros(SHAPE, dtype=bool)
CUBE = _box((2, 2, 2), (6, 6, 6))
CUBE_SHIFTED = _box((2, 2, 4), (6, 6, 8))  # shares half of CUBE's 64 voxels


# name, pred, gt, spacing, expected dice, expected hd95
RULES = [
    ("both_empty", EMPTY, EMPTY, (1, 1, 1), 1.0, 0.0),
    ("pred_empty", EMPTY, CUBE, (1, 1, 1), 0.0, math.sqrt(3 * 12**2)),  # the 12x12x12 grid's diagonal
    ("gt_empty", CUBE, EMPTY, (1.0, 2.0, 0.5), 0.0, math.sqrt(12**2 + 24**2 + 6**2)),
    ("identical", CUBE, CUBE, (1, 1, 1), 1.0, 0.0),
    ("disjoint_voxels_anisotropic", _voxel(1, 1, 1), _voxel(1, 1, 5), (1.0, 1.0, 2.0), 0.0, 8.0),
    ("half_overlap", CUBE, CUBE_SHIFTED, (1, 1, 1), 0.5, 2.0),
]


@pytest.mark.parametrize("name, pred, gt, spacing, dice, hd95", RULES, ids=[r[0] for r in RULES])
def test_legacy_rules_table(name, pred, gt, spacing, dice, hd95):
    assert legacy_dice(pred, gt) == pytest.approx(dice, abs=1e-6)
    assert legacy_hd95(pred, gt, spacing) == pytest.approx(hd95, abs=1e-5)


@pytest.mark.parametrize(
    "convert",
    [
        torch.from_numpy,
        lambda a: a.astype(np.uint8),
        lambda a: torch.from_numpy(a.astype(np.float32)),
        lambda a: a[::-1],  # negative-stride view
    ],
    ids=["torch_bool", "numpy_uint8", "torch_float01", "flipped_view"],
)
def test_other_input_types_match_numpy_bool(convert):
    assert legacy_dice(convert(CUBE), convert(CUBE_SHIFTED)) == pytest.approx(0.5)
    assert legacy_hd95(convert(CUBE), convert(CUBE_SHIFTED)) == pytest.approx(2.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_accepted():
    assert legacy_dice(torch.from_numpy(CUBE).cuda(), torch.from_numpy(CUBE_SHIFTED).cuda()) == pytest.approx(0.5)
    assert legacy_hd95(torch.from_numpy(CUBE).cuda(), torch.from_numpy(CUBE_SHIFTED).cuda()) == pytest.approx(2.0)
    out = postprocess_et(torch.from_numpy(np.stack([CUBE, CUBE, CUBE])).cuda())
    assert out.is_cuda and not bool(out[0].any())


def test_one_empty_penalty_is_the_brats_grid_diagonal():
    assert HD95_ONE_EMPTY_MM == pytest.approx(373.1287, abs=1e-4)
    assert image_diagonal_mm((240, 240, 155)) == pytest.approx(373.1287, abs=1e-4)
    assert image_diagonal_mm((120, 120, 78), (2.0, 2.0, 2.0)) == pytest.approx(math.sqrt(240**2 + 240**2 + 156**2))
    big = np.zeros((240, 240, 155), bool)
    big[100:104, 100:104, 70:74] = True
    assert legacy_hd95(big, np.zeros_like(big)) == pytest.approx(373.1287, abs=1e-4)


@pytest.mark.parametrize("shape, spacing", [((2, 3), (1, 1, 1)), ((0, 4, 4), (1, 1, 1)), ((4, 4, 4), (1, 1))])
def test_image_diagonal_bad_args(shape, spacing):
    with pytest.raises(ValueError, match="shape|spacing"):
        image_diagonal_mm(shape, spacing)


def _brute_surface(m: np.ndarray) -> np.ndarray:
    """Independent surface: a voxel with a face neighbour outside the mask or outside the image (no scipy erosion)."""
    padded = np.pad(m, 1, constant_values=False)
    interior = np.ones_like(m)
    for axis in range(3):
        for step in (-1, 1):
            interior &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
    return m & ~interior


def _brute_distances(a: np.ndarray, b: np.ndarray, spacing) -> np.ndarray:
    """For every surface voxel of A, the Euclidean distance (mm) to the nearest surface voxel of B, by brute force."""
    pa = np.argwhere(_brute_surface(a)) * np.asarray(spacing, float)
    pb = np.argwhere(_brute_surface(b)) * np.asarray(spacing, float)
    return cdist(pa, pb).min(axis=1)


def _brute_pooled_hd95(a, b, spacing) -> float:
    return float(np.percentile(np.concatenate([_brute_distances(a, b, spacing), _brute_distances(b, a, spacing)]), 95))


def _brute_directed_max_hd95(a, b, spacing) -> float:
    return float(
        max(np.percentile(_brute_distances(a, b, spacing), 95), np.percentile(_brute_distances(b, a, spacing), 95))
    )


def _random_blob(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=2.0)
    return noise > np.quantile(noise, rng.uniform(0.6, 0.9))


def _thin(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """A one-voxel-thick plate plus a one-voxel line: every voxel is a surface voxel."""
    m = np.zeros(shape, bool)
    m[rng.integers(1, shape[0] - 1), 2:-3, 3:-2] = True
    m[2:-2, rng.integers(0, shape[1]), rng.integers(0, shape[2])] = True
    return m


def _border(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """A blob cut by the image edge on several faces (the edge must count as background)."""
    m = _random_blob(rng, shape)
    m[: shape[0] // 2, : shape[1] // 3, :] = True
    m[:, -2:, -3:] = True
    return m


MASK_KINDS = {"random": _random_blob, "thin": _thin, "border": _border}
SPACINGS = [(1.0, 1.0, 1.0), (0.8, 1.5, 2.5), (2.0, 0.5, 1.0)]


@pytest.mark.parametrize("spacing", SPACINGS, ids=["iso", "aniso_a", "aniso_b"])
@pytest.mark.parametrize(
    "kind_a, kind_b", [("random", "random"), ("thin", "random"), ("border", "border"), ("thin", "border")]
)
def test_pooled_hd95_matches_independent_brute_force(kind_a, kind_b, spacing):
    rng = np.random.default_rng(zlib.crc32(repr((kind_a, kind_b, spacing)).encode()))
    shape = (14, 17, 11)
    for _ in range(3):
        a, b = MASK_KINDS[kind_a](rng, shape), MASK_KINDS[kind_b](rng, shape)
        expected = _brute_pooled_hd95(a, b, spacing)
        assert legacy_hd95(a, b, spacing) == pytest.approx(expected, abs=1e-3)
        assert legacy_hd95(b, a, spacing) == pytest.approx(expected, abs=1e-3)  # symmetric
        assert directed_max_hd95(a, b, spacing) == pytest.approx(_brute_directed_max_hd95(a, b, spacing), abs=1e-3)


@pytest.mark.parametrize("spacing", SPACINGS, ids=["iso", "aniso_a", "aniso_b"])
@pytest.mark.parametrize("kind", ["random", "thin", "border"])
def test_pooled_hd95_matches_medpy(kind, spacing):
    """medpy's hd95 is what CaPTk 1.8.1 (the BraTS 2018-2021 scoring) runs; installed with the dev extra."""
    medpy_binary = pytest.importorskip("medpy.metric.binary")
    rng = np.random.default_rng(zlib.crc32(repr((kind, spacing)).encode()))
    for _ in range(3):
        a, b = MASK_KINDS[kind](rng, (14, 17, 11)), _random_blob(rng, (14, 17, 11))
        expected = medpy_binary.hd95(a, b, voxelspacing=spacing, connectivity=1)
        assert legacy_hd95(a, b, spacing) == pytest.approx(expected, abs=1e-3)


def test_pooled_and_directed_max_differ_and_directed_max_is_never_lower():
    rng = np.random.default_rng(1234)
    gaps = []
    for _ in range(8):
        a, b = _random_blob(rng, (20, 24, 16)), _random_blob(rng, (20, 24, 16))
        pooled, dmax = legacy_hd95(a, b, (0.8, 1.5, 2.5)), directed_max_hd95(a, b, (0.8, 1.5, 2.5))
        assert dmax >= pooled - 1e-9
        gaps.append(dmax - pooled)
    # The default must be the pooled BraTS definition, not the max of the directed percentiles.
    assert max(gaps) > 0.1


def test_case_region_metrics_hd95_method_option():
    rng = np.random.default_rng(7)
    a = np.stack([_random_blob(rng, (16, 16, 12)) for _ in range(3)])
    b = np.stack([_random_blob(rng, (16, 16, 12)) for _ in range(3)])
    pooled = case_region_metrics(a, b)
    dmax = case_region_metrics(a, b, hd95_method="directed_max")
    for i, r in enumerate(REGIONS):
        assert pooled[r]["hd95"] == pytest.approx(_brute_pooled_hd95(a[i], b[i], (1, 1, 1)), abs=1e-3)
        assert dmax[r]["hd95"] == pytest.approx(_brute_directed_max_hd95(a[i], b[i], (1, 1, 1)), abs=1e-3)
    with pytest.raises(ValueError, match="hd95 method"):
        case_region_metrics(a, b, hd95_method="max")


def test_hd95_spacing_order_follows_array_axes():
    a, b = _voxel(1, 1, 1), _voxel(1, 4, 1)  # 3 voxels apart along axis 1
    assert legacy_hd95(a, b, (1.0, 2.0, 5.0)) == pytest.approx(6.0)


@pytest.mark.parametrize(
    "pred, gt, match",
    [
        (np.zeros((4, 4, 4), bool), np.zeros((4, 4, 5), bool), "one shape"),
        (np.zeros((4,), bool), np.zeros((4,), bool), "2-D or 3-D"),
        (np.zeros((1, 4, 4, 4), bool), np.zeros((1, 4, 4, 4), bool), "2-D or 3-D"),
        (np.full((4, 4, 4), 0.7), np.zeros((4, 4, 4), bool), "binary"),
        (np.zeros((0, 4, 4), bool), np.zeros((0, 4, 4), bool), "empty axis"),
    ],
    ids=["shape_mismatch", "1d", "4d", "probabilities", "empty_axis"],
)
def test_bad_masks_raise(pred, gt, match):
    with pytest.raises(ValueError, match=match):
        legacy_dice(pred, gt)
    with pytest.raises(ValueError, match=match):
        legacy_hd95(pred, gt)


def test_non_array_mask_raises_type_error():
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        legacy_dice([[[True]]], np.ones((1, 1, 1), bool))


@pytest.mark.parametrize(
    "spacing", [(1.0, 1.0), (1.0, 0.0, 1.0), (1.0, -1.0, 1.0), (float("nan"), 1.0, 1.0), "abc", (1, 1, 1, 1)]
)
def test_bad_spacing_raises(spacing):
    with pytest.raises(ValueError, match="spacing"):
        legacy_hd95(CUBE, CUBE_SHIFTED, spacing)


@pytest.mark.parametrize("convention, et", [(BRATS_LEGACY, 4), (BRATS_2023, 3), (2018, 4), ("brats2023", 3)])
def test_region_masks_from_labels(convention, et):
    labels = np.zeros((6, 6, 6), dtype=np.uint8)
    labels[1, 1, 1] = 1  # NCR
    labels[2, 2, 2] = 2  # ED
    labels[3, 3, 3] = et  # ET
    masks = region_masks_from_labels(labels, convention)
    assert masks.shape == (3, 6, 6, 6) and masks.dtype == bool
    got = {r: sorted(map(tuple, np.argwhere(masks[i]).tolist())) for i, r in enumerate(REGIONS)}
    assert got == {"ET": [(3, 3, 3)], "TC": [(1, 1, 1), (3, 3, 3)], "WT": [(1, 1, 1), (2, 2, 2), (3, 3, 3)]}
    assert np.array_equal(region_masks_from_labels(torch.from_numpy(labels[None]), convention), masks)


def test_region_masks_reject_foreign_labels():
    labels = np.zeros((4, 4, 4), dtype=np.uint8)
    labels[0, 0, 0] = 3  # a 2023 ET read with the legacy convention
    with pytest.raises(ValueError, match=r"\[3\].*brats2018"):
        region_masks_from_labels(labels, BRATS_LEGACY)


def test_region_masks_reject_1d():
    with pytest.raises(ValueError, match="3-D"):
        region_masks_from_labels(np.zeros((4,), np.uint8), BRATS_LEGACY)


def _disc(shape: tuple[int, int], centre: tuple[int, int], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


@pytest.mark.parametrize("shift", [0, 1, 3])
def test_2d_hd95_is_the_pooled_definition_in_two_dims(shift):
    """2-D masks: surfaces by one 4-connected erosion, both directions' distances pooled, 95th percentile."""
    a, b = _disc((24, 24), (10, 10), 5), _disc((24, 24), (10, 10 + shift), 4)
    got = legacy_hd95(a, b, (1.0, 2.0))
    sa, sb = (m & ~ndimage.binary_erosion(m, ndimage.generate_binary_structure(2, 1), border_value=0) for m in (a, b))
    d = np.concatenate(
        [
            ndimage.distance_transform_edt(~sb, sampling=(1.0, 2.0))[sa],
            ndimage.distance_transform_edt(~sa, sampling=(1.0, 2.0))[sb],
        ]
    )
    assert got == pytest.approx(float(np.percentile(d, 95)))
    assert legacy_dice(a, a) == 1.0 and legacy_hd95(a, a) == 0.0


def test_2d_case_metrics_and_empty_rules():
    labels = np.zeros((8, 10), np.uint8)
    labels[2:6, 2:7] = 2
    labels[3:5, 3:5] = 1
    regions = region_masks_from_labels(labels, BRATS_LEGACY)
    assert regions.shape == (3, 8, 10)
    scores = case_region_metrics(regions, regions)
    assert scores["ET"] == {"dice": 1.0, "hd95": 0.0}  # both empty
    assert scores["WT"] == {"dice": 1.0, "hd95": 0.0}
    empty = np.zeros_like(regions)
    one_empty = case_region_metrics(empty, regions, spacing=(2.0, 1.0))
    assert one_empty["WT"] == {"dice": 0.0, "hd95": pytest.approx(image_diagonal_mm((8, 10), (2.0, 1.0)))}
    assert image_diagonal_mm((8, 10), (2.0, 1.0)) == pytest.approx(np.hypot(16.0, 10.0))
    with pytest.raises(ValueError, match="two positive"):
        legacy_hd95(regions[2], regions[2], (1.0, 1.0, 1.0))


def test_region_masks_reject_fractional_labels():
    with pytest.raises(ValueError, match="integer"):
        region_masks_from_labels(np.full((4, 4, 4), 0.5), BRATS_LEGACY)


def test_case_region_metrics_per_region():
    pred = np.stack([EMPTY, CUBE, CUBE])
    gt = np.stack([CUBE, CUBE_SHIFTED, CUBE])
    spacing = (1.0, 1.0, 3.0)
    out = case_region_metrics(torch.from_numpy(pred), gt, spacing)
    assert list(out) == list(REGIONS)
    assert out["ET"] == {"dice": 0.0, "hd95": pytest.approx(math.sqrt(12**2 + 12**2 + 36**2))}  # this grid's diagonal
    assert out["TC"]["dice"] == pytest.approx(0.5)
    assert out["TC"]["hd95"] == pytest.approx(legacy_hd95(CUBE, CUBE_SHIFTED, spacing))
    assert out["WT"] == {"dice": 1.0, "hd95": 0.0}


@pytest.mark.parametrize(
    "pred_shape, gt_shape, match",
    [((2, *SHAPE), (2, *SHAPE), r"\(3, H, W, D\)"), ((3, *SHAPE), (3, 12, 12, 11), "one shape"), (SHAPE, SHAPE, "3,")],
    ids=["two_channels", "shape_mismatch", "no_channel_axis"],
)
def test_case_region_metrics_bad_shapes(pred_shape, gt_shape, match):
    with pytest.raises(ValueError, match=match):
        case_region_metrics(np.zeros(pred_shape, bool), np.zeros(gt_shape, bool))


def test_case_region_metrics_bad_spacing():
    with pytest.raises(ValueError, match="spacing"):
        case_region_metrics(np.zeros((3, *SHAPE), bool), np.zeros((3, *SHAPE), bool), spacing=(1.0, 1.0))


def _nested_prediction(et_voxels: int) -> np.ndarray:
    shape = (20, 20, 20)
    wt = np.zeros(shape, bool)
    wt[2:18, 2:18, 2:18] = True
    tc = np.zeros(shape, bool)
    tc[4:14, 4:14, 4:14] = True
    et = np.zeros(shape, bool)
    et.reshape(-1)[np.flatnonzero(tc)[:et_voxels]] = True
    return np.stack([et, tc, wt])


@pytest.mark.parametrize(
    "et_voxels, min_voxels, relabelled",
    [(30, 500, True), (499, 500, True), (500, 500, False), (900, 500, False), (30, 0, False), (0, 500, True)],
)
def test_postprocess_et(et_voxels, min_voxels, relabelled):
    pred = _nested_prediction(et_voxels)
    out = postprocess_et(pred, min_voxels=min_voxels)
    assert out.shape == pred.shape and out.dtype == bool
    assert out is not pred
    if relabelled:
        assert not out[0].any()
    else:
        assert np.array_equal(out[0], pred[0])
    assert np.array_equal(out[1], pred[1])  # nested: the former ET voxels were already TC
    assert np.array_equal(out[2], pred[2])


def test_postprocess_et_moves_stray_et_into_tc_and_keeps_wt():
    pred = _nested_prediction(0)
    pred[0, 0, 0, 0] = True  # ET outside TC and WT (independent sigmoid channels)
    out = postprocess_et(torch.from_numpy(pred))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.bool
    assert not bool(out[0].any())
    assert bool(out[1, 0, 0, 0])
    assert torch.equal(out[2], torch.from_numpy(pred[2]))


def test_postprocess_et_default_threshold_is_constant():
    pred = _nested_prediction(ET_MIN_VOXELS - 1)
    assert not postprocess_et(pred)[0].any()
    pred = _nested_prediction(ET_MIN_VOXELS)
    assert postprocess_et(pred)[0].sum() == ET_MIN_VOXELS


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"min_voxels": -1}, ValueError, ">= 0"),
        ({"min_voxels": 2.5}, TypeError, "int"),
        ({"min_voxels": True}, TypeError, "int"),
    ],
    ids=["negative", "float", "bool"],
)
def test_postprocess_et_bad_threshold(kwargs, error, match):
    with pytest.raises(error, match=match):
        postprocess_et(_nested_prediction(10), **kwargs)


@pytest.mark.parametrize("as_tensor", [False, True], ids=["numpy", "torch"])
def test_postprocess_et_bad_shape(as_tensor):
    pred = np.zeros((2, 4, 4, 4), bool)
    with pytest.raises(ValueError, match=r"\(3, H, W, D\)"):
        postprocess_et(torch.from_numpy(pred) if as_tensor else pred)


@pytest.mark.parametrize("as_tensor", [False, True], ids=["numpy", "torch"])
def test_postprocess_et_rejects_probabilities(as_tensor):
    pred = np.full((3, 4, 4, 4), 0.3, dtype=np.float32)
    with pytest.raises(ValueError, match="binary"):
        postprocess_et(torch.from_numpy(pred) if as_tensor else pred)
