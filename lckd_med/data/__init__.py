"""BraTS data: case discovery and validation, datalists and splits, MONAI transforms and chains, synthetic data.

The names below are imported on first use (PEP 562 ``__getattr__``): discovery, validation and datalists need only
nibabel and NumPy, so ``lckd-med prepare --help`` and the data-preparation command start without importing torch and
MONAI, which only the transforms need.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> the module of this package that defines it.
_EXPORTS: dict[str, str] = {
    "load_datalist": "datalist",
    "make_datalist": "datalist",
    "read_datalist": "datalist",
    "write_datalist": "datalist",
    "BratsCase": "layouts",
    "DiscoveryResult": "layouts",
    "detect_layout": "layouts",
    "discover_cases": "layouts",
    "eval_transforms": "pipelines",
    "train_transforms": "pipelines",
    "LabelToRegions": "transforms",
    "LabelToRegionsd": "transforms",
    "LoadModalities": "transforms",
    "LoadModalitiesd": "transforms",
    "MaskMissingModalities": "transforms",
    "MaskMissingModalitiesd": "transforms",
    "ModalityDropout": "transforms",
    "drop_modalities_batch": "transforms",
    "CaseCheck": "validation",
    "validate_case": "validation",
    "validate_cases": "validation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
