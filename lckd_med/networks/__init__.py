"""lckd_med.networks."""
