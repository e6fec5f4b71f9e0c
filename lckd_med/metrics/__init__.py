"""lckd_med.metrics: BraTS per-case metrics (legacy BraTS scoring: empty rules, pooled HD95), ET post-processing and
the paired bootstrap of a mean difference."""

from __future__ import annotations

from lckd_med.metrics.bootstrap import paired_bootstrap
from lckd_med.metrics.brats import (
    HD95_METHODS,
    case_region_metrics,
    directed_max_hd95,
    image_diagonal_mm,
    legacy_dice,
    legacy_hd95,
    postprocess_et,
    region_masks_from_labels,
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
    "paired_bootstrap",
]
