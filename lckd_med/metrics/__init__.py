"""lckd_med.metrics."""
