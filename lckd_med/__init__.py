"""lckd_med: 3D brain-tumour segmentation with missing MRI sequences, built on MONAI."""

from __future__ import annotations

from lckd_med import constants

__all__ = ["constants", "__version__"]

#: The package version; pyproject.toml reads it (``[tool.setuptools.dynamic]``), the bundles' metadata.json require it
#: (``required_packages_version``) and CHANGELOG.md's newest entry names it (tests/test_packaging.py checks all three).
__version__ = "0.5.3"
