"""lckd_med.reports."""
