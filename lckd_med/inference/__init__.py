"""lckd_med.inference: the one prediction path (:class:`Segmenter`), evaluation, geometry checks and batch inference on
user scans (the sweep lives in :mod:`lckd_med.prediction`, re-exported here)."""

from __future__ import annotations

from lckd_med.inference.batch import (
    MANIFEST_COLUMNS,
    REPORT_COLUMNS,
    REPORT_NAME,
    BatchInference,
    InferenceCase,
    discover_inference_cases,
    exit_on_failure,
    match_sequence_file,
    read_manifest,
)
from lckd_med.inference.evaluation import SubsetEvaluator, summary_table, voxel_spacing
from lckd_med.inference.geometry import (
    REFERENCE_PRIORITY,
    GeometryError,
    VolumeGeometry,
    align_volumes,
    check_and_align,
    choose_reference,
    compare_geometry,
    read_volume,
    reference_modality,
)
from lckd_med.inference.segmenter import Segmentation, Segmenter
from lckd_med.inference.subset_dice import SUBSET_DICE_NAME, read_subset_dice
from lckd_med.prediction.sweep import SubsetSweepPredictor, autocast_context, subset_masks, sweep_subsets

__all__ = [
    "Segmenter",
    "Segmentation",
    "align_volumes",
    "choose_reference",
    "sweep_subsets",
    "subset_masks",
    "SubsetSweepPredictor",
    "autocast_context",
    "check_and_align",
    "compare_geometry",
    "read_volume",
    "reference_modality",
    "GeometryError",
    "VolumeGeometry",
    "REFERENCE_PRIORITY",
    "SubsetEvaluator",
    "SUBSET_DICE_NAME",
    "read_subset_dice",
    "summary_table",
    "voxel_spacing",
    "BatchInference",
    "InferenceCase",
    "discover_inference_cases",
    "read_manifest",
    "match_sequence_file",
    "exit_on_failure",
    "MANIFEST_COLUMNS",
    "REPORT_COLUMNS",
    "REPORT_NAME",
]
