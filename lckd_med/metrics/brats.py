"""BraTS per-case metrics with the legacy (2017-2022) empty-region rules, and ET post-processing.

Regions are always handled in :data:`lckd_med.constants.REGIONS` order (ET, TC, WT). Masks may be numpy arrays
or torch tensors (CPU or CUDA); each input is converted once to a CPU numpy boolean array.

Empty-region rules (the legacy BraTS evaluation, applied per case and region):

* prediction and truth both empty: Dice 1.0, HD95 0.0 mm;
* exactly one empty: Dice 0.0, HD95 :data:`~lckd_med.constants.HD95_ONE_EMPTY_MM` (the 240x240x155 mm diagonal);
* both non-empty: Dice ``2|A∩B| / (|A|+|B|)``, HD95 as below.

HD95 definition (both non-empty): surface voxels are the voxels of a mask removed by one binary erosion with the
6-connected (face) structuring element, the image border counting as background; with voxel spacing applied,
``d(A->B)`` is the Euclidean distance from each surface voxel of ``A`` to the nearest surface voxel of ``B``, and
``HD95 = max(P95(d(A->B)), P95(d(B->A)))`` with linear-interpolated percentiles -- the medpy / BraTS-toolkit
definition. MONAI 1.6.1's ``compute_hausdorff_distance(percentile=95, directed=False)`` computes exactly this (one
percentile per direction, then the maximum; not a percentile of the pooled distances), so it does the work here;
it returns NaN when either mask is empty, which is why the empty cases are decided before calling it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance

from lckd_med.constants import (
    ET_MIN_VOXELS,
    HD95_ONE_EMPTY_MM,
    NUM_REGIONS,
    REGIONS,
    LabelConvention,
    label_convention,
)

__all__ = [
    "legacy_dice",
    "legacy_hd95",
    "region_masks_from_labels",
    "case_region_metrics",
    "postprocess_et",
]

_ET, _TC = REGIONS.index("ET"), REGIONS.index("TC")


def _to_bool_array(x: Any, name: str) -> np.ndarray:
    """One CPU numpy boolean copy of a mask; 0/1 integer or float masks are accepted, anything else refused."""
    if isinstance(x, torch.Tensor):
        arr = x.detach().cpu().numpy()
    elif isinstance(x, np.ndarray):
        arr = x
    else:
        raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")
    if arr.dtype == bool:
        return np.ascontiguousarray(arr)  # torch.from_numpy refuses negative strides (flipped views)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold booleans (or 0/1 numbers), got dtype {arr.dtype}")
    values = np.unique(arr)
    if not np.isin(values, (0, 1)).all():
        raise ValueError(
            f"{name} must be a binary mask (0/1 or bool), found values {values[:6].tolist()}; threshold probabilities first"
        )
    return arr.astype(bool)


def _check_pair(pred: Any, gt: Any, ndim: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    p = _to_bool_array(pred, "pred")
    g = _to_bool_array(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt must have one shape, got {tuple(p.shape)} and {tuple(g.shape)}")
    if p.ndim != ndim:
        raise ValueError(f"{what} must be {ndim}-D, got shape {tuple(p.shape)}")
    if 0 in p.shape:
        raise ValueError(f"{what} must not have an empty axis, got shape {tuple(p.shape)}")
    return p, g


def _check_spacing(spacing: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    try:
        values = tuple(float(s) for s in np.asarray(spacing, dtype=float).reshape(-1))
    except (TypeError, ValueError):
        raise ValueError(f"spacing must be three positive numbers (mm), got {spacing!r}") from None
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be three positive finite numbers (mm), got {spacing!r}")
    return values  # type: ignore[return-value]


def _dice(p: np.ndarray, g: np.ndarray) -> float:
    # ignore_empty=False gives MONAI the legacy rules: 1 when both are empty, 0 when only one is.
    value = compute_dice(
        torch.from_numpy(p)[None, None], torch.from_numpy(g)[None, None], include_background=True, ignore_empty=False
    )
    return float(value.item())


def _hd95(p: np.ndarray, g: np.ndarray, spacing: tuple[float, float, float]) -> float:
    p_any, g_any = bool(p.any()), bool(g.any())
    if not p_any and not g_any:
        return 0.0
    if p_any != g_any:
        return float(HD95_ONE_EMPTY_MM)
    with warnings.catch_warnings():
        # MONAI 1.6.1 passes its own deprecated argument internally; the warning is noise for our callers.
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
        value = compute_hausdorff_distance(
            p[None, None],
            g[None, None],
            include_background=True,
            distance_metric="euclidean",
            percentile=95,
            directed=False,
            spacing=list(spacing),
        )
    return float(value.item())


def legacy_dice(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> float:
    """Dice of two binary 3D masks with the legacy BraTS empty rules.

    Args:
        pred: predicted mask ``(H, W, D)``, bool (or 0/1), numpy or torch (any device).
        gt: ground-truth mask of the same shape.

    Returns:
        1.0 if both are empty, 0.0 if exactly one is empty, else ``2|A∩B| / (|A| + |B|)``.

    Raises:
        ValueError: shapes differ, not 3-D, or non-binary values. TypeError: unsupported type.
    """
    p, g = _check_pair(pred, gt, 3, "masks")
    return _dice(p, g)


def legacy_hd95(
    pred: np.ndarray | torch.Tensor,
    gt: np.ndarray | torch.Tensor,
    spacing: Sequence[float] | np.ndarray = (1.0, 1.0, 1.0),
) -> float:
    """Symmetric 95th-percentile Hausdorff distance in mm with the legacy BraTS empty rules.

    See the module docstring for the exact definition (max of the two directed 95th percentiles over surface
    voxels, spacing applied).

    Args:
        pred: predicted mask ``(H, W, D)``, bool (or 0/1), numpy or torch (any device).
        gt: ground-truth mask of the same shape.
        spacing: voxel size in mm along the three array axes.

    Returns:
        0.0 if both are empty, :data:`~lckd_med.constants.HD95_ONE_EMPTY_MM` if exactly one is empty, else the
        HD95 in mm.

    Raises:
        ValueError: shapes differ, not 3-D, non-binary values, or spacing not three positive numbers.
    """
    p, g = _check_pair(pred, gt, 3, "masks")
    return _hd95(p, g, _check_spacing(spacing))


def region_masks_from_labels(
    label_map: np.ndarray | torch.Tensor, convention: LabelConvention | int | str
) -> np.ndarray:
    """Nested region masks of a BraTS label map.

    Args:
        label_map: integer label map ``(H, W, D)`` (a leading singleton channel ``(1, H, W, D)`` is accepted).
        convention: a :class:`~lckd_med.constants.LabelConvention`, a release year or a convention name.

    Returns:
        bool array ``(3, H, W, D)`` in REGIONS order (ET, TC, WT), from ``convention.region_labels``.

    Raises:
        ValueError: not 3-D, or values outside ``convention.labels`` (e.g. a 2023 map read as legacy).
    """
    conv = label_convention(convention)
    arr = label_map.detach().cpu().numpy() if isinstance(label_map, torch.Tensor) else np.asarray(label_map)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(f"label_map must be 3-D (H, W, D), got shape {tuple(arr.shape)}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError("label_map must hold integer label values")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "biu":
        raise ValueError(f"label_map must hold integer label values, got dtype {arr.dtype}")
    unexpected = sorted(set(np.unique(arr).tolist()) - set(conv.labels))
    if unexpected:
        raise ValueError(
            f"label_map has values {unexpected} not in the {conv.name} convention {conv.labels}; wrong release?"
        )
    return np.stack([np.isin(arr, conv.region_labels[r]) for r in REGIONS])


def _check_regions(x: Any, name: str) -> np.ndarray:
    arr = _to_bool_array(x, name)
    if arr.ndim != 4 or arr.shape[0] != NUM_REGIONS:
        raise ValueError(f"{name} must have shape ({NUM_REGIONS}, H, W, D) in order {REGIONS}, got {tuple(arr.shape)}")
    return arr


def case_region_metrics(
    pred_regions: np.ndarray | torch.Tensor,
    gt_regions: np.ndarray | torch.Tensor,
    spacing: Sequence[float] | np.ndarray = (1.0, 1.0, 1.0),
) -> dict[str, dict[str, float]]:
    """Dice and HD95 of every region of one case.

    Args:
        pred_regions: predicted region masks ``(3, H, W, D)`` in REGIONS order (ET, TC, WT).
        gt_regions: ground-truth region masks, same shape and order.
        spacing: voxel size in mm along the three spatial axes.

    Returns:
        ``{"ET": {"dice": .., "hd95": ..}, "TC": {...}, "WT": {...}}`` (keys in REGIONS order).
    """
    p = _check_regions(pred_regions, "pred_regions")
    g = _check_regions(gt_regions, "gt_regions")
    if p.shape != g.shape:
        raise ValueError(f"pred_regions and gt_regions must have one shape, got {p.shape} and {g.shape}")
    sp = _check_spacing(spacing)
    return {r: {"dice": _dice(p[i], g[i]), "hd95": _hd95(p[i], g[i], sp)} for i, r in enumerate(REGIONS)}


def postprocess_et(
    pred_regions: np.ndarray | torch.Tensor, min_voxels: int = ET_MIN_VOXELS
) -> np.ndarray | torch.Tensor:
    """Relabel a small predicted ET as necrosis (NCR), as peers do before scoring.

    If the predicted ET has fewer than ``min_voxels`` voxels, the ET channel is emptied and its voxels are added to
    TC (NCR belongs to TC); WT is left unchanged. Otherwise the input is returned unchanged (as a copy).

    Args:
        pred_regions: predicted region masks ``(3, H, W, D)`` in REGIONS order, numpy or torch.
        min_voxels: ET size threshold; 0 disables the post-processing.

    Returns:
        masks of the same shape, type and device as the input (bool).
    """
    if isinstance(min_voxels, bool) or not isinstance(min_voxels, (int, np.integer)):
        raise TypeError(f"min_voxels must be an int, got {type(min_voxels).__name__}")
    if min_voxels < 0:
        raise ValueError(f"min_voxels must be >= 0, got {min_voxels}")
    if isinstance(pred_regions, torch.Tensor):
        # Stay on the caller's device: a tensor in, a tensor out.
        if pred_regions.ndim != 4 or pred_regions.shape[0] != NUM_REGIONS:
            raise ValueError(
                f"pred_regions must have shape ({NUM_REGIONS}, H, W, D) in order {REGIONS}, got {tuple(pred_regions.shape)}"
            )
        if pred_regions.dtype != torch.bool and not bool(((pred_regions == 0) | (pred_regions == 1)).all()):
            raise ValueError("pred_regions must be a binary mask (0/1 or bool); threshold probabilities first")
        out = pred_regions.to(torch.bool).clone()
        if int(out[_ET].sum().item()) < min_voxels:
            out[_TC] |= out[_ET]
            out[_ET] = False
        return out
    out = _check_regions(pred_regions, "pred_regions").copy()
    if int(out[_ET].sum()) < min_voxels:
        out[_TC] |= out[_ET]
        out[_ET] = False
    return out
