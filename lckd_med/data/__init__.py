"""BraTS data: case discovery and validation, datalists and splits, MONAI transforms and chains, synthetic data."""

from __future__ import annotations

from lckd_med.data.datalist import load_datalist, make_datalist, read_datalist, write_datalist
from lckd_med.data.layouts import BratsCase, DiscoveryResult, detect_layout, discover_cases
from lckd_med.data.pipelines import eval_transforms, train_transforms
from lckd_med.data.transforms import (
    LabelToRegions,
    LabelToRegionsd,
    LoadModalities,
    LoadModalitiesd,
    MaskMissingModalities,
    MaskMissingModalitiesd,
    ModalityDropout,
    drop_modalities_batch,
)
from lckd_med.data.validation import CaseCheck, validate_case, validate_cases

__all__ = [
    "BratsCase",
    "CaseCheck",
    "DiscoveryResult",
    "LabelToRegions",
    "LabelToRegionsd",
    "LoadModalities",
    "LoadModalitiesd",
    "MaskMissingModalities",
    "MaskMissingModalitiesd",
    "ModalityDropout",
    "detect_layout",
    "discover_cases",
    "drop_modalities_batch",
    "eval_transforms",
    "load_datalist",
    "make_datalist",
    "read_datalist",
    "train_transforms",
    "validate_case",
    "validate_cases",
    "write_datalist",
]
