"""BraTS per-case metrics with the legacy (2017-2022) BraTS scoring rules, and ET post-processing.

Regions are always handled in :data:`lckd_med.constants.REGIONS` order (ET, TC, WT). Masks may be numpy arrays
or torch tensors (CPU or CUDA); each input is converted once to a CPU numpy boolean array.

Empty-region rules (the legacy BraTS evaluation, applied per case and region):

* prediction and truth both empty: Dice 1.0, HD95 0.0 mm;
* exactly one empty: Dice 0.0, HD95 = the diagonal of the case's own image grid in mm (:func:`image_diagonal_mm`:
  373.1287 mm on the 240x240x155 1 mm BraTS grid, :data:`~lckd_med.constants.HD95_ONE_EMPTY_MM`);
* both non-empty: Dice ``2|A∩B| / (|A|+|B|)``, HD95 as below.

HD95 (both non-empty), default ``"pooled"`` -- the BraTS 2018-2021 scoring (CaPTk 1.8.1's Hausdorff95 tool, which
calls medpy's ``hd95``; nnU-Net's BraTS evaluation does the same): the surface voxels of a mask are the voxels removed
by one binary erosion with the 6-connected (face) structuring element, the image edge counting as background; with
voxel spacing applied, the Euclidean distance from every surface voxel of ``A`` to the nearest surface voxel of
``B`` and from every surface voxel of ``B`` to the nearest of ``A`` are POOLED into one array, and HD95 is its
95th percentile (numpy's linear interpolation).

``"directed_max"`` (:func:`directed_max_hd95`) is the other common definition, ``max(P95(d(A->B)), P95(d(B->A)))``
(MONAI's ``compute_hausdorff_distance(percentile=95, directed=False)``); it is never below the pooled value and
differs by up to a few mm, so it is kept only as a named option, not comparable with published BraTS tables.
MONAI returns only the two directed percentiles, not the raw distances, so the pooled value is computed here from
``scipy.ndimage`` erosion and Euclidean distance transform.

2-D masks (``(H, W)``, e.g. a 2-D modality spec's images) are scored by the same rules in two dimensions: surface
pixels by one erosion with the 4-connected (edge) structuring element, spacing of two axes, the one-empty penalty
the diagonal of the 2-D grid. Spacing defaults to 1 along every axis of the mask.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from scipy import ndimage

from lckd_med.constants import (
    ET_MIN_VOXELS,
    NUM_REGIONS,
    REGIONS,
    LabelConvention,
    label_convention,
)

__all__ = [
    "HD95_METHODS",
    "legacy_dice",
    "legacy_hd95",
    "directed_max_hd95",
    "image_diagonal_mm",
    "region_masks_from_labels",
    "case_region_metrics",
    "postprocess_et",
]

_ET, _TC = REGIONS.index("ET"), REGIONS.index("TC")

#: HD95 definitions: ``"pooled"`` (legacy BraTS / medpy, the default) and ``"directed_max"``.
HD95_METHODS: tuple[str, ...] = ("pooled", "directed_max")
_FACE_CONNECTED = ndimage.generate_binary_structure(3, 1)
#: Masks may be 2-D (images) or 3-D (volumes).
_MASK_DIMS: tuple[int, ...] = (2, 3)
_COUNT_WORDS = {2: "two", 3: "three"}


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


def _check_pair(pred: Any, gt: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    p = _to_bool_array(pred, "pred")
    g = _to_bool_array(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt must have one shape, got {tuple(p.shape)} and {tuple(g.shape)}")
    if p.ndim not in _MASK_DIMS:
        raise ValueError(f"{what} must be 2-D or 3-D, got shape {tuple(p.shape)}")
    if 0 in p.shape:
        raise ValueError(f"{what} must not have an empty axis, got shape {tuple(p.shape)}")
    return p, g


def _check_spacing(spacing: Sequence[float] | np.ndarray | None, ndim: int = 3) -> tuple[float, ...]:
    """Validated spacing with one entry per mask axis; ``None`` = 1 mm along each."""
    if spacing is None:
        return (1.0,) * ndim
    count = _COUNT_WORDS.get(ndim, str(ndim))
    try:
        values = tuple(float(s) for s in np.asarray(spacing, dtype=float).reshape(-1))
    except (TypeError, ValueError):
        raise ValueError(f"spacing must be {count} positive numbers (mm), got {spacing!r}") from None
    if len(values) != ndim or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be {count} positive finite numbers (mm), got {spacing!r}")
    return values


def _dice(p: np.ndarray, g: np.ndarray) -> float:
    # ignore_empty=False gives MONAI the legacy rules: 1 when both are empty, 0 when only one is.
    value = compute_dice(
        torch.from_numpy(p)[None, None], torch.from_numpy(g)[None, None], include_background=True, ignore_empty=False
    )
    return float(value.item())


def image_diagonal_mm(shape: Sequence[int], spacing: Sequence[float] | np.ndarray | None = None) -> float:
    """Diagonal of an image grid in mm, ``sqrt(sum((n_i * s_i)^2))``: the HD95 penalty when one mask is empty.

    Args:
        shape: array shape ``(H, W, D)`` (or ``(H, W)`` for a 2-D image).
        spacing: voxel size in mm along the same axes; ``None`` = 1 along each.

    Returns:
        373.1287 for the 240x240x155 1 mm BraTS grid.
    """
    dims = tuple(int(n) for n in shape)
    if len(dims) not in _MASK_DIMS or min(dims) < 1:
        raise ValueError(f"shape must be two or three positive sizes, got {tuple(shape)!r}")
    sp = _check_spacing(spacing, len(dims))
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(dims, sp, strict=True))))


def _surface(mask: np.ndarray) -> np.ndarray:
    # border_value=0: the image edge counts as background, so a mask touching it has a surface there (as medpy)
    structure = _FACE_CONNECTED if mask.ndim == 3 else ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _pooled_hd95(p: np.ndarray, g: np.ndarray, spacing: tuple[float, ...]) -> float:
    # Crop to the union's bounding box: every surface voxel lies inside it and the masks are empty outside it, so
    # erosion and distances are unchanged, and a small tumour in a 240x240x155 image costs little.
    box = tuple(slice(int(a.min()), int(a.max()) + 1) for a in np.nonzero(p | g))
    sp, sg = _surface(p[box]), _surface(g[box])
    d_pg = ndimage.distance_transform_edt(~sg, sampling=spacing)[sp]
    d_gp = ndimage.distance_transform_edt(~sp, sampling=spacing)[sg]
    return float(np.percentile(np.concatenate([d_pg, d_gp]), 95))


def _directed_max_hd95(p: np.ndarray, g: np.ndarray, spacing: tuple[float, ...]) -> float:
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


def _check_method(method: str) -> str:
    if method not in HD95_METHODS:
        raise ValueError(f"hd95 method must be one of {HD95_METHODS}, got {method!r}")
    return method


def _hd95(p: np.ndarray, g: np.ndarray, spacing: tuple[float, ...], method: str = "pooled") -> float:
    p_any, g_any = bool(p.any()), bool(g.any())
    if not p_any and not g_any:
        return 0.0
    if p_any != g_any:
        return image_diagonal_mm(p.shape, spacing)
    if method == "directed_max":
        return _directed_max_hd95(p, g, spacing)
    return _pooled_hd95(p, g, spacing)


def legacy_dice(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> float:
    """Dice of two binary 3D (or 2D) masks with the legacy BraTS empty rules.

    Args:
        pred: predicted mask ``(H, W, D)`` (or ``(H, W)``), bool (or 0/1), numpy or torch (any device).
        gt: ground-truth mask of the same shape.

    Returns:
        1.0 if both are empty, 0.0 if exactly one is empty, else ``2|A∩B| / (|A| + |B|)``.

    Raises:
        ValueError: shapes differ, not 2-D or 3-D, or non-binary values. TypeError: unsupported type.
    """
    p, g = _check_pair(pred, gt, "masks")
    return _dice(p, g)


def legacy_hd95(
    pred: np.ndarray | torch.Tensor,
    gt: np.ndarray | torch.Tensor,
    spacing: Sequence[float] | np.ndarray | None = None,
) -> float:
    """95th-percentile Hausdorff distance in mm as the legacy BraTS scoring computes it (pooled directions).

    See the module docstring for the exact definition (one 95th percentile of both directions' surface distances
    pooled, spacing applied, medpy's ``hd95``).

    Args:
        pred: predicted mask ``(H, W, D)`` (or ``(H, W)``), bool (or 0/1), numpy or torch (any device).
        gt: ground-truth mask of the same shape.
        spacing: voxel size in mm along the array axes; ``None`` = 1 along each.

    Returns:
        0.0 if both are empty, the grid diagonal :func:`image_diagonal_mm` if exactly one is empty, else the HD95
        in mm.

    Raises:
        ValueError: shapes differ, not 2-D or 3-D, non-binary values, or spacing not one positive number per axis.
    """
    p, g = _check_pair(pred, gt, "masks")
    return _hd95(p, g, _check_spacing(spacing, p.ndim), "pooled")


def directed_max_hd95(
    pred: np.ndarray | torch.Tensor,
    gt: np.ndarray | torch.Tensor,
    spacing: Sequence[float] | np.ndarray | None = None,
) -> float:
    """``max(P95(d(pred->gt)), P95(d(gt->pred)))`` in mm, with the same surfaces and empty rules as :func:`legacy_hd95`.

    Not the BraTS definition (it is never below it); kept as the ``"directed_max"`` option.

    Args:
        pred: predicted mask ``(H, W, D)`` (or ``(H, W)``), bool (or 0/1), numpy or torch (any device).
        gt: ground-truth mask of the same shape.
        spacing: voxel size in mm along the array axes; ``None`` = 1 along each.

    Raises:
        ValueError: shapes differ, not 2-D or 3-D, non-binary values, or spacing not one positive number per axis.
    """
    p, g = _check_pair(pred, gt, "masks")
    return _hd95(p, g, _check_spacing(spacing, p.ndim), "directed_max")


def region_masks_from_labels(
    label_map: np.ndarray | torch.Tensor, convention: LabelConvention | int | str
) -> np.ndarray:
    """Nested region masks of a BraTS label map.

    Args:
        label_map: integer label map ``(H, W, D)`` (a leading singleton channel ``(1, H, W, D)`` is accepted), or
            ``(H, W)`` for 2-D data.
        convention: a :class:`~lckd_med.constants.LabelConvention`, a release year or a convention name.

    Returns:
        bool array ``(3, H, W, D)`` (``(3, H, W)``) in REGIONS order (ET, TC, WT), from ``convention.region_labels``.

    Raises:
        ValueError: not 2-D or 3-D, or values outside ``convention.labels`` (e.g. a 2023 map read as legacy).
    """
    conv = label_convention(convention)
    arr = label_map.detach().cpu().numpy() if isinstance(label_map, torch.Tensor) else np.asarray(label_map)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim not in _MASK_DIMS:
        raise ValueError(f"label_map must be 3-D (H, W, D) or 2-D (H, W), got shape {tuple(arr.shape)}")
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
    if arr.ndim - 1 not in _MASK_DIMS or arr.shape[0] != NUM_REGIONS:
        raise ValueError(
            f"{name} must have shape ({NUM_REGIONS}, H, W, D) (or ({NUM_REGIONS}, H, W)) in order {REGIONS}, "
            f"got {tuple(arr.shape)}"
        )
    return arr


def case_region_metrics(
    pred_regions: np.ndarray | torch.Tensor,
    gt_regions: np.ndarray | torch.Tensor,
    spacing: Sequence[float] | np.ndarray | None = None,
    hd95_method: str = "pooled",
) -> dict[str, dict[str, float]]:
    """Dice and HD95 of every region of one case.

    Args:
        pred_regions: predicted region masks ``(3, H, W, D)`` (or ``(3, H, W)``) in REGIONS order (ET, TC, WT).
        gt_regions: ground-truth region masks, same shape and order.
        spacing: voxel size in mm along the spatial axes (also sizes the one-empty penalty, the grid diagonal);
            ``None`` = 1 along each.
        hd95_method: ``"pooled"`` (legacy BraTS, default) or ``"directed_max"``.

    Returns:
        ``{"ET": {"dice": .., "hd95": ..}, "TC": {...}, "WT": {...}}`` (keys in REGIONS order).
    """
    p = _check_regions(pred_regions, "pred_regions")
    g = _check_regions(gt_regions, "gt_regions")
    if p.shape != g.shape:
        raise ValueError(f"pred_regions and gt_regions must have one shape, got {p.shape} and {g.shape}")
    sp = _check_spacing(spacing, p.ndim - 1)
    method = _check_method(hd95_method)
    return {r: {"dice": _dice(p[i], g[i]), "hd95": _hd95(p[i], g[i], sp, method)} for i, r in enumerate(REGIONS)}


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
        if pred_regions.ndim - 1 not in _MASK_DIMS or pred_regions.shape[0] != NUM_REGIONS:
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
