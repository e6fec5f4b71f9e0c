"""Array resizing with the pixel-centre geometry and spline orders of ``skimage.transform.resize``.

The LCKD reference resizes with scikit-image (its dataset-level scale augmentation, and batchgenerators' low
resolution simulation): output voxel ``i`` samples the input at ``(i + 0.5) * n_in / n_out - 0.5`` with a spline
of order 0 (nearest), 1 (linear) or 3 (cubic) and an edge rule (``"constant"`` 0 or ``"nearest"``, i.e. skimage's
``"edge"``). MONAI's ``Resize`` goes through ``torch.nn.functional.interpolate``: no cubic spline in 3-D, and its
linear mode replicates the border instead of blending with a constant, hence :func:`grid_resize` (scipy's
``map_coordinates``, which scikit-image calls itself).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["grid_resize"]

_ORDERS = (0, 1, 3)
_MODES = ("constant", "nearest")


def grid_resize(
    array: np.ndarray, shape: Sequence[int], order: int, mode: str = "nearest", clip: bool = False
) -> np.ndarray:
    """Resize a ``(*S)`` array to ``shape`` as ``skimage.transform.resize(..., anti_aliasing=False)`` does.

    Args:
        array: the input, any number of axes.
        shape: output size, one entry per axis (positive ints).
        order: spline order, 0, 1 or 3.
        mode: ``"constant"`` (0 outside) or ``"nearest"`` (edge values outside).
        clip: clip the result to the input's ``[min, max]`` (skimage's ``clip=True``: with ``"constant"`` and 0
            outside that range, voxels equal to 0 stay 0).

    Returns:
        float64 array of ``shape``.

    Raises:
        ValueError: bad ``shape``, ``order`` or ``mode``.
    """
    x = np.asarray(array, dtype=np.float64)
    shape = tuple(int(n) for n in shape)
    if len(shape) != x.ndim or any(n < 1 for n in shape):
        raise ValueError(f"shape must have {x.ndim} positive sizes, got {shape}")
    if order not in _ORDERS:
        raise ValueError(f"order must be one of {_ORDERS}, got {order!r}")
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if shape == x.shape:
        return x.copy()
    axes = [(np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5 for n_in, n_out in zip(x.shape, shape, strict=True)]
    coords = np.stack(np.meshgrid(*axes, indexing="ij"))
    # "grid-constant": samples just outside the first/last voxel centre blend with 0, as scikit-image resizes
    ndi_mode = "grid-constant" if mode == "constant" else mode
    out = ndimage.map_coordinates(x, coords, order=order, mode=ndi_mode, cval=0.0)
    if clip and order > 0:
        low, high = x.min(), x.max()
        keep = out == 0.0 if mode == "constant" and not low <= 0.0 <= high else None  # skimage keeps cval voxels
        np.clip(out, low, high, out=out)
        if keep is not None:
            out[keep] = 0.0
    return out
