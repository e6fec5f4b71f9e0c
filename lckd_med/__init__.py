"""lckd_med: 3D brain-tumour segmentation with missing MRI sequences, built on MONAI."""

from __future__ import annotations

from lckd_med import constants

__all__ = ["constants", "__version__"]

__version__ = "0.3.0"
