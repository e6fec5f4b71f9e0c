"""Moved to :mod:`lckd_med.prediction.sweep` (a layer below the engines); kept so old imports keep working."""

from __future__ import annotations

from lckd_med.prediction.sweep import BLEND_MODES, SubsetSweepPredictor, autocast_context, subset_masks, sweep_subsets

__all__ = ["BLEND_MODES", "subset_masks", "SubsetSweepPredictor", "sweep_subsets", "autocast_context"]
