"""The LCKD reference's post-processing of a predicted BraTS label map (``postprocess.py``,
``continues_region_extract``), as a named option of evaluation and inference.

On the label map as written (the case's own grid; axis 2 = slices), in the reference's order:

1. whole-tumour components (labels >= 1), 6-connected (its ``skimage.measure.label(neighbors=4)``: face
   neighbours); a component smaller than ``min(2000, 0.1 x largest)`` voxels, or whose highest slice index (axis 2)
   is <= 25, is removed;
2. in a kept component, when the whole prediction has ``ET / WT < 0.12`` (voxel counts), the component has
   ``4 n_ET < 450`` and ``4 n_ET / (n_NCR + 2 n_ED + 4 n_ET) < 0.05`` (the reference sums the label *values* 1, 2, 4
   of the component), and the whole map has fewer than 10,000 NCR voxels: the T1ce intensities of the component's
   oedema (zeros elsewhere, the whole volume) are split into 3 clusters by 1-D k-means and the oedema voxels of the
   middle cluster (the highest centre is set to the lowest, then the highest is taken) become NCR;
3. if the map has fewer than 500 ET voxels, every ET voxel becomes NCR.

Sizes are in voxels of the BraTS 1 mm grid; on another grid the voxel counts and the slice index scale with the
voxel size (``spacing``), as the ET rule of :func:`lckd_med.metrics.brats.postprocess_et` does in evaluation.

Departures, each where the reference cannot be reproduced or would misbehave: its k-means is OpenCV's
(``cv2.kmeans``, random starts, 3 attempts, at most 10 iterations): here the exact optimum of the 1-D 3-means
problem (what the best of several starts converges to; the same partition on well-separated intensities); a
component without oedema is not clustered (the reference would cluster an all-zero volume and turn the whole map
into NCR); without T1ce (a subset without it: reading it would leak a sequence the model was not given) step 2 is
skipped. MONAI has no post-processing with these rules (its ``KeepLargestConnectedComponent`` keeps one component),
hence this module.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from lckd_med.constants import LabelConvention, label_convention

__all__ = ["POSTPROCESSINGS", "REFERENCE_POSTPROCESS", "kmeans_1d", "reference_postprocess"]

#: Named post-processing of evaluation (scored beside the raw predictions) and batch inference (applied to the
#: written maps): ``"none"`` (default) or ``"reference"`` (this module). Evaluation's ET rule (``postprocess_min_et``,
#: the ``*_pp`` columns of every report) is separate.
POSTPROCESSINGS: tuple[str, ...] = ("none", "reference")
#: The reference's constants (voxels of the 1 mm grid, slice index, ratios).
REFERENCE_POSTPROCESS = {
    "min_component": 2000,
    "component_fraction": 0.1,
    "min_top_slice": 25,
    "kmeans_et_ratio": 0.12,
    "kmeans_component_ratio": 0.05,
    "kmeans_component_et": 450,
    "kmeans_max_ncr": 10000,
    "min_et": 500,
}
_FACE = ndimage.generate_binary_structure(3, 1)


def kmeans_1d(values: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Exact 1-D k-means: the partition of ``values`` into ``k`` intervals with the least within-cluster squared error.

    Args:
        values: 1-D array (repeats allowed: computed on the distinct values with their counts).
        k: number of clusters (1 to 3).

    Returns:
        ``(centres (k,), labels)``: cluster means in ascending order and each value's cluster index (ascending
        centres). With fewer distinct values than ``k`` the missing clusters repeat the last centre and stay empty.
    """
    if k not in (1, 2, 3):
        raise ValueError(f"k must be 1, 2 or 3, got {k!r}")
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("kmeans_1d needs at least one value")
    uniq, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    u = uniq.size
    cw = np.concatenate([[0.0], np.cumsum(counts)])
    cs = np.concatenate([[0.0], np.cumsum(counts * uniq)])
    cq = np.concatenate([[0.0], np.cumsum(counts * uniq**2)])

    def sse(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:  # error of distinct values [a, b)
        w = cw[b] - cw[a]
        s = cs[b] - cs[a]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(w > 0, cq[b] - cq[a] - s * s / np.where(w > 0, w, 1), 0.0)

    bounds: list[int]
    if k == 1 or u == 1:
        bounds = [u]
    elif k == 2 or u == 2:
        cuts = np.arange(1, u)
        bounds = [int(cuts[np.argmin(sse(0, cuts) + sse(cuts, u))]), u]
    else:
        best, bounds = np.inf, [u]
        for j in range(2, u):  # clusters [0, i), [i, j), [j, u)
            i = np.arange(1, j)
            cost = sse(0, i) + sse(i, j) + sse(j, u)
            m = int(np.argmin(cost))
            if cost[m] < best:
                best, bounds = float(cost[m]), [int(i[m]), j, u]
    starts = [0, *bounds[:-1]]
    centres = [(cs[b] - cs[a]) / (cw[b] - cw[a]) for a, b in zip(starts, bounds, strict=True)]
    centres += [centres[-1]] * (k - len(centres))
    cluster_of_unique = np.searchsorted(np.asarray(bounds), np.arange(u), side="right")
    return np.asarray(centres), cluster_of_unique[inverse].reshape(np.shape(values))


def reference_postprocess(
    labels: np.ndarray,
    t1ce: np.ndarray | None = None,
    convention: int | str | LabelConvention = "brats2018",
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """Apply the reference post-processing (see the module docstring) to a 3-D BraTS label map.

    Args:
        labels: ``(X, Y, Z)`` integer label map (0 background, NCR, ED, ET of ``convention``), axis 2 = slices.
        t1ce: the case's raw T1ce on the same grid, or ``None`` to skip the k-means step.
        convention: label convention (ET = 4 up to 2022, 3 from 2023).
        spacing: voxel size in mm (default 1 mm): the voxel counts and the slice index scale with it.

    Returns:
        the processed label map (a new array of the input's dtype).

    Raises:
        ValueError: not a 3-D map, or ``t1ce`` of another shape.
    """
    lab = np.array(labels, copy=True)
    if lab.ndim != 3:
        raise ValueError(f"labels must be a 3-D label map, got shape {lab.shape}")
    if t1ce is not None and np.shape(t1ce) != lab.shape:
        raise ValueError(f"t1ce shape {np.shape(t1ce)} differs from the label map's {lab.shape}")
    conv = label_convention(convention)
    ncr, ed, et = conv.ncr, conv.ed, conv.et
    sp = (1.0, 1.0, 1.0) if spacing is None else tuple(float(s) for s in spacing)
    volume = float(np.prod(sp))
    c = REFERENCE_POSTPROCESS

    components, n = ndimage.label(lab > 0, structure=_FACE)
    if n:
        sizes = np.bincount(components.ravel(), minlength=n + 1)
        top_slice = [box[2].stop - 1 for box in ndimage.find_objects(components)]
        min_size = min(c["min_component"] / volume, c["component_fraction"] * sizes[1:].max())
        whole_et, whole_wt = np.count_nonzero(lab == et), np.count_nonzero(lab > 0)
        for i in range(1, n + 1):
            comp = components == i
            if sizes[i] < min_size or top_slice[i - 1] <= c["min_top_slice"] / sp[2]:
                lab[comp] = 0
                continue
            if t1ce is None:
                continue
            n_et = np.count_nonzero(comp & (lab == et))
            weighted = np.count_nonzero(comp & (lab == ncr)) + 2 * np.count_nonzero(comp & (lab == ed)) + 4 * n_et
            oedema = comp & (lab == ed)
            if (
                weighted > 0
                and whole_et / whole_wt < c["kmeans_et_ratio"]
                and 4 * n_et / weighted < c["kmeans_component_ratio"]
                and 4 * n_et < c["kmeans_component_et"] / volume
                and np.count_nonzero(lab == ncr) < c["kmeans_max_ncr"] / volume
                and oedema.any()
            ):
                # the reference clusters the whole volume: this component's oedema intensities, zeros elsewhere
                values = np.where(oedema, np.asarray(t1ce, dtype=np.float64), 0.0)
                _, cluster = kmeans_1d(values.ravel(), 3)
                middle = cluster.reshape(lab.shape) == 1  # highest centre replaced by the lowest -> the middle one
                if not middle[~oedema].any():  # never relabel voxels outside this component's oedema
                    lab[middle] = ncr
    if np.count_nonzero(lab == et) < c["min_et"] / volume:
        lab[lab == et] = ncr
    return lab
