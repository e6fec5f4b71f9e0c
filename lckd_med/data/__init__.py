"""lckd_med.data."""
