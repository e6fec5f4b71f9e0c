"""lckd_med.metrics: BraTS per-case metrics (legacy empty-region rules) and ET post-processing."""

from __future__ import annotations

from lckd_med.metrics.brats import (
    case_region_metrics,
    legacy_dice,
    legacy_hd95,
    postprocess_et,
    region_masks_from_labels,
)

__all__ = [
    "legacy_dice",
    "legacy_hd95",
    "region_masks_from_labels",
    "case_region_metrics",
    "postprocess_et",
]
