"""The LCKD reference's patch sampling (``BraTSDataSet.locate_bbx_wScale``): region-or-uniform crop centres and a
crop-then-resize scale augmentation.

Per patch, on the whole normalised volume (axes ``(H, W, D)``, D = axial slices; the reference crops ``80x160x160``
in its ``(D, H, W)`` order, i.e. ``roi_size = (160, 160, 80)`` here):

1. scale: with probability ``scale_prob`` (0.5) draw ``s ~ U(scale_range)`` (0.9, 1.1), else ``s = 1``; the crop is
   ``int(roi * s)`` voxels per axis (one ``s`` for all axes);
2. centre: with probability ``region_prob`` (0.5) draw one of the label's region channels or "none", uniformly (the
   reference's ``np.random.choice(3 + 1)``); a non-empty region centres the crop on one of its voxels drawn
   uniformly (start ``= c - size // 2``), shifted back inside the volume when it sticks out; "none", an empty region,
   or the other half of the draws take a uniform start in ``[margin, n - margin - size]`` per axis (margins ``15,
   10, 0`` voxels on ``H, W, D``: the reference's ``h0 in [15, H - 175]``, ``w0 in [10, W - 170]``, ``d0 in [0, D -
   80]``). For BraTS about 37.5 % of the patches are region-centred (0.5 x 3/4);
3. resize: a scaled crop is resized to ``roi_size``, images linearly (0 outside), labels by nearest neighbour
   (:func:`~lckd_med.data.resize.grid_resize`, the scikit-image geometry of the reference; its anti-aliasing has a
   sub-voxel kernel at these factors and changes nothing).

Departures, where the reference would fail or misbehave: margins shrink (to at most ``(n - size) // 2``) when the
volume is too small for them, a volume smaller than the crop is cropped whole before the resize, and an odd crop
size keeps its size (the reference's ``c +- size // 2`` loses a voxel there; BraTS sizes are even).

MONAI's ``RandCropByLabelClassesd`` draws a class per patch but has no "none" class with margin-limited uniform
starts and no crop-size scale, hence :class:`ReferenceCropd`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, SpatialCrop
from monai.transforms.traits import MultiSampleTrait
from monai.utils import convert_to_dst_type

from lckd_med.data.resize import grid_resize

__all__ = ["REFERENCE_MARGINS", "ReferenceCropd"]

#: Margins of the uniform crop start in ``(H, W, D)`` (the reference's 15 / 10 / 0 on its ``h, w, d``).
REFERENCE_MARGINS: tuple[int, int, int] = (15, 10, 0)


def _probability(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


class ReferenceCropd(Randomizable, MapTransform, MultiSampleTrait):
    """Sample ``num_samples`` patches of ``roi_size`` with the reference's law (see the module docstring).

    Args:
        keys: image and label keys (cropped alike; the label is resized by nearest neighbour).
        label_key: the ``(R, H, W, D)`` region label whose channels are the candidate centres.
        roi_size: patch size ``(H, W, D)``.
        region_prob: probability of drawing a region / "none" (the other draws are uniform starts).
        margins: per-axis margins of the uniform start.
        scale_prob: probability of a scaled crop.
        scale_range: ``(low, high)`` of the crop-size factor.
        num_samples: patches per call (a list of dicts is returned, as MONAI's crop samplers do).
        allow_missing_keys: skip absent keys.

    Raises:
        ValueError: any invalid argument.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str,
        roi_size: Sequence[int],
        region_prob: float = 0.5,
        margins: Sequence[int] = REFERENCE_MARGINS,
        scale_prob: float = 0.5,
        scale_range: Sequence[float] = (0.9, 1.1),
        num_samples: int = 1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_key = label_key
        roi = tuple(roi_size)
        if not roi or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in roi):
            raise ValueError(f"roi_size must be positive ints, got {roi_size!r}")
        self.roi_size = roi
        margins = tuple(margins)
        if len(margins) != len(roi) or any(isinstance(m, bool) or not isinstance(m, int) or m < 0 for m in margins):
            raise ValueError(f"margins must be {len(roi)} ints >= 0, got {margins!r}")
        self.margins = margins
        self.region_prob = _probability("region_prob", region_prob)
        self.scale_prob = _probability("scale_prob", scale_prob)
        low, high = (float(v) for v in scale_range)
        if not 0 < low <= high:
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {scale_range!r}")
        self.scale_range = (low, high)
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        self.num_samples = num_samples

    def randomize(self, data: Any = None) -> None:  # draws happen per patch in draw_box
        pass

    def draw_box(self, label: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...], bool]:
        """One patch's ``(start, end, scaled)`` on a ``(R, *S)`` boolean region label (see the module docstring)."""
        shape = label.shape[1:]
        scaled = bool(self.R.uniform() < self.scale_prob)
        s = self.R.uniform(*self.scale_range) if scaled else 1.0
        size = [int(r * s) for r in self.roi_size]
        centre = None
        if self.R.uniform() < self.region_prob:
            region = int(self.R.randint(label.shape[0] + 1))  # label.shape[0] = "none"
            if region < label.shape[0]:
                voxels = np.flatnonzero(label[region])
                if voxels.size:
                    centre = np.unravel_index(voxels[self.R.randint(voxels.size)], shape)
        start = []
        for axis, (n, k) in enumerate(zip(shape, size, strict=True)):
            k = min(k, n)
            if centre is not None:
                a = int(centre[axis]) - k // 2
                a = min(max(a, 0), n - k)  # shifted back inside, as the reference's delta corrections
            else:
                margin = min(self.margins[axis], (n - k) // 2)
                a = int(self.R.randint(margin, n - margin - k + 1))
            start.append(a)
        end = tuple(a + min(k, n) for a, k, n in zip(start, size, shape, strict=True))
        return tuple(start), end, scaled

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:
        d = dict(data)
        label = np.asarray(torch.as_tensor(d[self.label_key]).detach().cpu()) > 0
        out = []
        for _ in range(self.num_samples):
            start, end, scaled = self.draw_box(label)
            sample = dict(d)
            for key in self.key_iterator(d):
                patch = SpatialCrop(roi_start=start, roi_end=end)(d[key])
                if scaled or tuple(patch.shape[1:]) != self.roi_size:
                    nearest = key == self.label_key
                    arr = np.asarray(torch.as_tensor(patch).detach().cpu())
                    resized = np.stack(
                        [
                            grid_resize(
                                c, self.roi_size, order=0 if nearest else 1, mode="nearest" if nearest else "constant"
                            )
                            for c in arr
                        ]
                    )
                    patch = convert_to_dst_type(resized.astype(arr.dtype), patch)[0]
                sample[key] = patch
            out.append(sample)
        return out
