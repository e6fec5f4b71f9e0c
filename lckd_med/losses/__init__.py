"""lckd_med.losses."""
