"""lckd_med.inference."""
