"""lckd_med.reports: per-subset metric tables, Markdown/CSV summaries and figures."""

from __future__ import annotations

from lckd_med.reports.subset_report import (
    MEAN_ROW,
    METRIC_COLUMNS,
    MODALITY_LABELS,
    PP_COLUMNS,
    REPORT_FILES,
    format_table,
    plot_dice_heatmap,
    read_summary,
    rows_from_case_metrics,
    subset_label,
    summarize,
    validate_metrics_table,
    write_reports,
)

__all__ = [
    "METRIC_COLUMNS",
    "PP_COLUMNS",
    "MEAN_ROW",
    "MODALITY_LABELS",
    "REPORT_FILES",
    "subset_label",
    "rows_from_case_metrics",
    "validate_metrics_table",
    "summarize",
    "format_table",
    "plot_dice_heatmap",
    "write_reports",
    "read_summary",
]
