"""lckd_med.engines."""
