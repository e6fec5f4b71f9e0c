"""lckd_med.prediction: the one sliding-window subset predictor and device resolver.

It sits below the engines (teacher election predicts with it) and below inference (evaluation and batch
inference predict with it); it imports only constants and MONAI.
"""

from __future__ import annotations

from lckd_med.prediction.device import resolve_device
from lckd_med.prediction.predictor import SubsetPredictor, resolve_roi_size
from lckd_med.prediction.sweep import (
    BLEND_MODES,
    WINDOW_AVERAGES,
    SubsetSweepPredictor,
    autocast_context,
    subset_masks,
    sweep_subsets,
)

__all__ = [
    "BLEND_MODES",
    "WINDOW_AVERAGES",
    "SubsetPredictor",
    "SubsetSweepPredictor",
    "autocast_context",
    "resolve_device",
    "resolve_roi_size",
    "subset_masks",
    "sweep_subsets",
]
