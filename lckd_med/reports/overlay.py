"""A picture of a segmentation: three orthogonal slices through the tumour with the labels overlaid.

Users look before they read: ``lckd-med predict --png``, batch inference's ``png`` and evaluation's ``save_png`` write
one PNG per case with :func:`save_overlay`. The slices go through the centre of the predicted tumour (the brain's
centre when nothing was predicted) of the reference sequence, shown in the RAS+ orientation (neurological view:
the patient's right on the right, anterior up in the axial view), with each pixel's aspect ratio the voxel size's.
Labels are drawn in fixed colours (NCR red, ED green, ET yellow); the legend names them and the sequences used.
The figure is built on matplotlib's Agg canvas (no display, no pyplot state) and written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from lckd_med.constants import BRATS_LEGACY, LabelConvention
from lckd_med.utils.io import atomic_path

__all__ = ["LABEL_COLOURS", "OVERLAY_ALPHA", "slice_centre", "save_overlay"]

#: RGB colour (0..1) of each tumour part in the picture, by meaning (the label values follow the convention).
LABEL_COLOURS: dict[str, tuple[float, float, float]] = {
    "NCR": (0.95, 0.15, 0.15),
    "ED": (0.20, 0.80, 0.25),
    "ET": (1.00, 0.85, 0.00),
}
#: Opacity of the label colours over the image.
OVERLAY_ALPHA: float = 0.55


def slice_centre(labels: np.ndarray, background: np.ndarray) -> tuple[int, int, int]:
    """Voxel ``(i, j, k)`` the three slices go through: the centre of mass of the labelled voxels, else of the
    non-zero background (the brain), else the middle of the volume."""
    for mask in (labels > 0, background != 0):
        if mask.any():
            return tuple(int(round(float(c))) for c in np.argwhere(mask).mean(axis=0))  # type: ignore[return-value]
    return tuple(int(s) // 2 for s in labels.shape)  # type: ignore[return-value]


def _grey(image: np.ndarray) -> np.ndarray:
    """Intensities scaled to [0, 1] by the 1st and 99th percentiles of the non-zero voxels."""
    values = image[image != 0]
    if values.size == 0:
        return np.zeros_like(image, dtype=np.float32)
    low, high = np.percentile(values, [1, 99])
    return np.clip((image - low) / max(float(high - low), 1e-6), 0.0, 1.0).astype(np.float32)


def save_overlay(
    path: str | os.PathLike,
    background: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    *,
    sequences: Sequence[str],
    background_name: str,
    convention: LabelConvention = BRATS_LEGACY,
    title: str | None = None,
    dpi: int = 80,
) -> Path:
    """Write a PNG of three orthogonal slices of ``background`` with ``labels`` overlaid.

    Args:
        path: the ``.png`` file (written atomically).
        background: ``(H, W, D)`` image the labels lie on (the reference sequence).
        labels: ``(H, W, D)`` label map of ``convention`` on the same grid.
        affine: ``(4, 4)`` voxel -> world (mm) matrix of that grid.
        sequences: the sequences the segmentation used (shown in the legend).
        background_name: the sequence shown under the labels.
        convention: label values (ET = 4 or 3).
        title: a line above the slices (e.g. the case id).
        dpi: resolution (80: a 1 mm BraTS case gives a picture of about 100 KB).

    Raises:
        ValueError: ``background`` and ``labels`` of other shapes, or not 3-D.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    background = np.asarray(background, dtype=np.float32)
    labels = np.asarray(labels)
    if background.ndim != 3 or background.shape != labels.shape:
        raise ValueError(f"background and labels must be 3-D of one shape, got {background.shape} and {labels.shape}")
    ornt = nib.orientations.io_orientation(np.asarray(affine, dtype=float))
    grey = nib.orientations.apply_orientation(_grey(background), ornt)
    lab = nib.orientations.apply_orientation(labels, ornt)
    sizes = np.sqrt((np.asarray(affine, dtype=float)[:3, :3] ** 2).sum(axis=0))
    spacing = [float(sizes[int(axis)]) for axis, _ in ornt]  # per RAS axis
    colour = np.zeros((*lab.shape, 4), np.float32)
    parts = {"NCR": convention.ncr, "ED": convention.ed, "ET": convention.et}
    for part, value in parts.items():
        colour[lab == value] = (*LABEL_COLOURS[part], OVERLAY_ALPHA)
    i, j, k = slice_centre(lab, grey)
    views = [
        ("axial", grey[:, :, k].T, colour[:, :, k].transpose(1, 0, 2), spacing[1] / spacing[0]),
        ("coronal", grey[:, j, :].T, colour[:, j, :].transpose(1, 0, 2), spacing[2] / spacing[0]),
        ("sagittal", grey[i, :, :].T, colour[i, :, :].transpose(1, 0, 2), spacing[2] / spacing[1]),
    ]
    fig = Figure(figsize=(10.0, 4.2), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax, (name, image, overlay, aspect) in zip(axes, views, strict=True):
        ax.imshow(image, cmap="gray", origin="lower", vmin=0.0, vmax=1.0, aspect=aspect, interpolation="nearest")
        ax.imshow(overlay, origin="lower", aspect=aspect, interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [
        Patch(color=LABEL_COLOURS[part], label=f"{part} ({value})", alpha=OVERLAY_ALPHA)
        for part, value in parts.items()
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=9, frameon=False)
    size = " x ".join(f"{v:.3g}" for v in sizes)
    caption = f"sequences used: {', '.join(sequences)}; shown: {background_name} ({size} mm voxels), R on the right"
    fig.suptitle((f"{title}\n" if title else "") + caption, fontsize=10)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
