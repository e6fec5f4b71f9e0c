"""Small shared helpers (atomic file writing)."""

from __future__ import annotations

from lckd_med.utils.io import atomic_path, save_label_map, save_nifti_atomic, write_text_atomic

__all__ = ["atomic_path", "save_label_map", "save_nifti_atomic", "write_text_atomic"]
