"""Per-subset BraTS reports: long metrics table -> summary table, Markdown, CSV and a Dice heat map.

Input is a long-format table with one row per case, modality subset and region::

    case_id | subset | region | dice | hd95 [| dice_pp | hd95_pp]

``subset`` is a canonical name from :data:`lckd_med.constants.SUBSET_NAMES` (``"t1ce+t2"``), ``region`` one of
:data:`lckd_med.constants.REGIONS`, ``dice`` a fraction in [0, 1] and ``hd95`` a distance in mm, both already under
the legacy empty-region rules (:mod:`lckd_med.metrics.brats`). The optional ``dice_pp``/``hd95_pp`` hold the ET
metrics after ET post-processing (:func:`lckd_med.metrics.brats.postprocess_et`); they are read on ET rows only
and may be NaN elsewhere.

Summary (:func:`summarize`): one row per subset in canonical order (singles, pairs, triples, all four) then a
``"mean"`` row. Columns: ``subset, n_cases``, then ``{region}_{metric}_{mean|std}`` for metric in (dice, hd95) and
region in REGIONS (``ET_dice_mean, ET_dice_std, TC_dice_mean, ..., WT_hd95_std``), then ``ET_pp_dice_mean/std`` and
``ET_pp_hd95_mean/std`` when the post-processed columns are present. Statistics are over cases; ``std`` is the
sample standard deviation (ddof=1, NaN for a single case). The mean row holds the average of the subset rows for
every column (so ``*_mean`` is the peers' "average over the 15 subsets" figure, ``*_std`` the average per-subset
spread) and ``n_cases`` = distinct cases in the whole table. With ``allow_partial=True``, subsets absent from the
table keep their row with ``n_cases = 0`` and NaN metrics, and the mean row averages the subsets present only
(the Markdown caption says over how many).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from lckd_med.constants import (
    HD95_ONE_EMPTY_MM,
    REGIONS,
    SUBSET_SEPARATOR,
)
from lckd_med.modalities import BRATS, ModalitySpec
from lckd_med.utils.io import atomic_path, write_text_atomic
from lckd_med.utils.outputs import OwnedFiles

__all__ = [
    "METRIC_COLUMNS",
    "PP_COLUMNS",
    "MEAN_ROW",
    "MODALITY_LABELS",
    "REPORT_FILES",
    "check_reports_writable",
    "subset_label",
    "rows_from_case_metrics",
    "validate_metrics_table",
    "summarize",
    "format_table",
    "plot_dice_heatmap",
    "write_reports",
    "read_summary",
]

#: Required columns of the long metrics table, in output order.
METRIC_COLUMNS: tuple[str, ...] = ("case_id", "subset", "region", "dice", "hd95")
#: Optional columns: ET metrics after post-processing (read on ET rows).
PP_COLUMNS: tuple[str, ...] = ("dice_pp", "hd95_pp")
#: Label of the last summary row.
MEAN_ROW = "mean"
#: Display names of the modality keys (reports and figures only; keys stay lower case everywhere else).
MODALITY_LABELS: dict[str, str] = {"flair": "FLAIR", "t1": "T1", "t1ce": "T1ce", "t2": "T2"}
#: File names written by :func:`write_reports`, by key of its returned dict.
REPORT_FILES: dict[str, str] = {
    "metrics_csv": "subset_metrics.csv",
    "summary_csv": "subset_summary.csv",
    "summary_md": "subset_summary.md",
    "heatmap_png": "subset_dice_heatmap.png",
}

_METRICS = ("dice", "hd95")
_DEFAULT_TITLE = "BraTS segmentation by available MRI sequences"


def subset_label(name: str, modalities: ModalitySpec = BRATS) -> str:
    """Readable label of a canonical subset name (``"flair+t1ce"`` -> ``"FLAIR+T1ce"``; ``"mean"`` -> ``"Mean"``);
    modality keys without a BraTS label are shown as they are."""
    if name == MEAN_ROW:
        return "Mean"
    return SUBSET_SEPARATOR.join(MODALITY_LABELS.get(m, m) for m in modalities.parse_subset(name))


def rows_from_case_metrics(
    case_id: str,
    subset: str,
    metrics: Mapping[str, Mapping[str, float]],
    metrics_pp: Mapping[str, Mapping[str, float]] | None = None,
    modalities: ModalitySpec = BRATS,
) -> list[dict[str, object]]:
    """Long-table rows of one case evaluated with one subset.

    Args:
        case_id: case identifier.
        subset: canonical subset name.
        metrics: ``{region: {"dice": .., "hd95": ..}}`` as returned by
            :func:`lckd_med.metrics.brats.case_region_metrics`.
        metrics_pp: the same after ET post-processing; only its ET entry is used (``dice_pp``/``hd95_pp`` columns,
            NaN on TC/WT rows).
        modalities: the spec whose subset names are valid (default BraTS).

    Returns:
        three dicts (REGIONS order) with the keys of :data:`METRIC_COLUMNS` (+ :data:`PP_COLUMNS`).
    """
    if not isinstance(case_id, str) or not case_id:
        raise ValueError(f"case_id must be a non-empty string, got {case_id!r}")
    if subset not in modalities.subset_names:
        raise ValueError(f"unknown subset {subset!r}; expected one of {modalities.subset_names}")
    missing = [r for r in REGIONS if r not in metrics]
    if missing:
        raise ValueError(f"case {case_id}: metrics lack regions {missing}")
    if metrics_pp is not None and "ET" not in metrics_pp:
        raise ValueError(f"case {case_id}: metrics_pp lacks the ET region")
    rows: list[dict[str, object]] = []
    for region in REGIONS:
        row: dict[str, object] = {
            "case_id": case_id,
            "subset": subset,
            "region": region,
            "dice": float(metrics[region]["dice"]),
            "hd95": float(metrics[region]["hd95"]),
        }
        if metrics_pp is not None:
            et = region == "ET"
            row["dice_pp"] = float(metrics_pp["ET"]["dice"]) if et else math.nan
            row["hd95_pp"] = float(metrics_pp["ET"]["hd95"]) if et else math.nan
        rows.append(row)
    return rows


def _check_values(df: pd.DataFrame, column: str, dice: bool) -> None:
    values = pd.to_numeric(df[column], errors="coerce")
    bad = df.loc[values.isna(), ["case_id", "subset", "region"]]
    if len(bad):
        first = bad.iloc[0].tolist()
        raise ValueError(f"column {column!r} has {len(bad)} missing or non-numeric values (first: {first})")
    if dice and ((values < 0) | (values > 1)).any():
        raise ValueError(
            f"column {column!r} must hold Dice fractions in [0, 1], found range "
            f"[{values.min():.4g}, {values.max():.4g}] (percentages?)"
        )
    if not dice and ((values < 0) | ~np.isfinite(values)).any():
        raise ValueError(f"column {column!r} must hold finite distances >= 0 mm")


def validate_metrics_table(
    df: pd.DataFrame, allow_partial: bool = False, modalities: ModalitySpec = BRATS
) -> pd.DataFrame:
    """Check a long metrics table and return a copy sorted by canonical subset, case and region order.

    ``modalities``: the spec whose subsets the table holds (default BraTS, the 15 subsets).

    Raises:
        TypeError: not a DataFrame.
        ValueError: empty table, missing columns, unknown subset or region names, invalid values, duplicate or
            incomplete (case, subset) region triples, or (unless ``allow_partial``) subsets absent.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in METRIC_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"metrics table lacks columns {missing}; required {list(METRIC_COLUMNS)}")
    if df.empty:
        raise ValueError("metrics table is empty")
    out = df.copy()
    out["case_id"] = out["case_id"].astype(str)
    names = modalities.subset_names
    unknown_subsets = sorted(set(out["subset"].astype(str)) - set(names))
    if unknown_subsets:
        hints = []
        for name in unknown_subsets:
            try:
                hints.append(f"{name!r} -> {SUBSET_SEPARATOR.join(modalities.parse_subset(name))!r}")
            except ValueError:
                pass
        hint = f" (canonical spelling: {', '.join(hints)})" if hints else ""
        raise ValueError(f"unknown subset names {unknown_subsets}{hint}; expected names from {list(names)}")
    unknown_regions = sorted(set(out["region"].astype(str)) - set(REGIONS))
    if unknown_regions:
        raise ValueError(f"unknown region names {unknown_regions}; expected {list(REGIONS)}")
    for column in _METRICS:
        _check_values(out, column, dice=column == "dice")
    et_rows = out[out["region"] == "ET"]
    for column in PP_COLUMNS:
        if column in out.columns:
            _check_values(et_rows, column, dice=column == "dice_pp")
    dup = out.duplicated(["case_id", "subset", "region"], keep=False)
    if dup.any():
        first = out.loc[dup, ["case_id", "subset", "region"]].iloc[0].tolist()
        raise ValueError(f"{int(dup.sum())} duplicate (case_id, subset, region) rows (first: {first})")
    counts = out.groupby(["case_id", "subset"]).size()
    incomplete = counts[counts != len(REGIONS)]
    if len(incomplete):
        raise ValueError(
            f"{len(incomplete)} (case_id, subset) pairs lack some of the regions {list(REGIONS)} "
            f"(first: {list(incomplete.index[0])})"
        )
    absent = [s for s in names if s not in set(out["subset"])]
    if absent and not allow_partial:
        raise ValueError(f"subsets absent from the metrics table: {absent}; pass allow_partial=True to report NaN rows")
    out["subset"] = pd.Categorical(out["subset"], categories=names, ordered=True)
    out["region"] = pd.Categorical(out["region"], categories=REGIONS, ordered=True)
    out = out.sort_values(["subset", "case_id", "region"], kind="stable").reset_index(drop=True)
    out["subset"] = out["subset"].astype(str)
    out["region"] = out["region"].astype(str)
    extra = [c for c in out.columns if c not in METRIC_COLUMNS + PP_COLUMNS]
    return out[[*METRIC_COLUMNS, *[c for c in PP_COLUMNS if c in out.columns], *extra]]


def _summary_columns(pp: tuple[str, ...]) -> list[str]:
    cols = ["subset", "n_cases"]
    cols += [f"{r}_{m}_{s}" for m in _METRICS for r in REGIONS for s in ("mean", "std")]
    cols += [f"ET_pp_{c.removesuffix('_pp')}_{s}" for c in pp for s in ("mean", "std")]
    return cols


def summarize(df: pd.DataFrame, allow_partial: bool = False, modalities: ModalitySpec = BRATS) -> pd.DataFrame:
    """Per-subset mean and std of Dice and HD95 per region, plus a mean row (see the module docstring).

    Args:
        df: long metrics table (:data:`METRIC_COLUMNS`, optional :data:`PP_COLUMNS`).
        allow_partial: report subsets absent from ``df`` as NaN rows instead of raising.
        modalities: the spec whose subsets are summarised (default BraTS).

    Returns:
        16 rows for BraTS (the 15 subsets in canonical order, then ``"mean"``; ``2**M`` rows for ``M``
        modalities); Dice as fractions in [0, 1], HD95 in mm.
    """
    table = validate_metrics_table(df, allow_partial=allow_partial, modalities=modalities)
    pp = tuple(c for c in PP_COLUMNS if c in table.columns)
    rows: list[dict[str, object]] = []
    for subset in modalities.subset_names:
        part = table[table["subset"] == subset]
        row: dict[str, object] = {"subset": subset, "n_cases": int(part["case_id"].nunique())}
        for metric in _METRICS:
            for region in REGIONS:
                values = part.loc[part["region"] == region, metric].astype(float)
                row[f"{region}_{metric}_mean"] = values.mean() if len(values) else math.nan
                row[f"{region}_{metric}_std"] = values.std(ddof=1) if len(values) > 1 else math.nan
        for column in pp:
            values = part.loc[part["region"] == "ET", column].astype(float)
            name = f"ET_pp_{column.removesuffix('_pp')}"
            row[f"{name}_mean"] = values.mean() if len(values) else math.nan
            row[f"{name}_std"] = values.std(ddof=1) if len(values) > 1 else math.nan
        rows.append(row)
    summary = pd.DataFrame(rows, columns=_summary_columns(pp))
    metric_cols = summary.columns[2:]
    mean_row: dict[str, object] = {"subset": MEAN_ROW, "n_cases": int(table["case_id"].nunique())}
    present = summary[summary["n_cases"] > 0]
    for col in metric_cols:
        values = present[col].astype(float)
        mean_row[col] = float(values.mean()) if values.notna().any() else math.nan
    summary = pd.concat([summary, pd.DataFrame([mean_row])], ignore_index=True)
    summary["n_cases"] = summary["n_cases"].astype(int)
    return summary


def _check_summary(summary: pd.DataFrame, modalities: ModalitySpec = BRATS) -> tuple[str, ...]:
    if not isinstance(summary, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(summary).__name__}")
    pp = tuple(c for c in PP_COLUMNS if f"ET_pp_{c.removesuffix('_pp')}_mean" in summary.columns)
    missing = [c for c in _summary_columns(pp) if c not in summary.columns]
    if missing:
        raise ValueError(f"summary table lacks columns {missing}")
    expected = [*modalities.subset_names, MEAN_ROW]
    if summary["subset"].astype(str).tolist() != expected:
        raise ValueError(f"summary rows must be the subsets in canonical order then {MEAN_ROW!r}: {expected}")
    return pp


def _fmt(mean: float, std: float, scale: float, digits: int) -> str:
    if mean is None or not np.isfinite(mean):
        return "n/a"
    text = f"{mean * scale:.{digits}f}"
    if std is not None and np.isfinite(std):
        text += f" ± {std * scale:.{digits}f}"
    return text


def format_table(
    summary: pd.DataFrame, title: str | None = None, caption: str | None = None, modalities: ModalitySpec = BRATS
) -> str:
    """Markdown rendering of a :func:`summarize` table.

    Dice is shown in percent with one decimal as ``mean ± std`` per region (post-processed ET beside ET when
    present), HD95 in mm likewise; one row per subset (readable labels such as ``FLAIR+T1ce``), then ``Mean``,
    then a caption line (``caption`` or a default stating units, statistics and empty-region rules).

    ``modalities``: the spec whose subsets the summary holds (default BraTS).

    Returns:
        the Markdown text, ending with a newline.
    """
    pp = _check_summary(summary, modalities)
    dice_cols: list[tuple[str, str]] = []
    for region in REGIONS:
        dice_cols.append((f"{region} Dice %", f"{region}_dice"))
        if region == "ET" and "dice_pp" in pp:
            dice_cols.append(("ET pp Dice %", "ET_pp_dice"))
    hd_cols: list[tuple[str, str]] = []
    for region in REGIONS:
        hd_cols.append((f"{region} HD95 mm", f"{region}_hd95"))
        if region == "ET" and "hd95_pp" in pp:
            hd_cols.append(("ET pp HD95 mm", "ET_pp_hd95"))
    header = ["Subset", "n", *[h for h, _ in dice_cols], *[h for h, _ in hd_cols]]
    lines = []
    if title:
        lines += [f"## {title}", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join([":---", "---:", *["---:"] * (len(header) - 2)]) + "|")
    for _, row in summary.iterrows():
        cells = [subset_label(str(row["subset"]), modalities), str(int(row["n_cases"]))]
        cells += [_fmt(row[f"{p}_mean"], row[f"{p}_std"], 100.0, 1) for _, p in dice_cols]
        cells += [_fmt(row[f"{p}_mean"], row[f"{p}_std"], 1.0, 2) for _, p in hd_cols]
        lines.append("| " + " | ".join(cells) + " |")
    if caption is None:
        n_present = int((summary["subset"].ne(MEAN_ROW) & summary["n_cases"].gt(0)).sum())
        grid = f" ({HD95_ONE_EMPTY_MM:.4f} mm on the 240x240x155 1 mm grid)" if modalities == BRATS else ""
        caption = (
            "Dice (%) and HD95 (mm) as mean ± std over cases for each set of available sequences "
            f"(modality keys {', '.join(modalities.names)}); Mean averages the {n_present} of "
            f"{len(modalities.subset_names)} subsets evaluated. Legacy BraTS rules: both masks empty -> Dice 100, "
            f"HD95 0; exactly one empty -> Dice 0, HD95 = the image diagonal{grid}; HD95 is one 95th "
            "percentile of both directions' surface distances pooled (BraTS 2018-2021 scoring)."
        )
        if pp:
            caption += " ET pp: ET after post-processing (a small predicted ET relabelled as necrosis)."
    lines += ["", caption.strip()]
    return "\n".join(lines) + "\n"


def plot_dice_heatmap(
    summary: pd.DataFrame,
    path: str | os.PathLike[str],
    title: str = _DEFAULT_TITLE,
    modalities: ModalitySpec = BRATS,
) -> Path:
    """Save a heat map of mean Dice (%) by subset (rows, canonical order, then Mean) and region (ET, TC, WT).

    The figure is built with the Agg canvas directly (no pyplot state, no display needed) and written atomically.
    Absent subsets (NaN) are grey cells marked ``n/a``. ``modalities``: the spec of the subsets (default BraTS).
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    _check_summary(summary, modalities)
    path = Path(path)
    values = summary[[f"{r}_dice_mean" for r in REGIONS]].to_numpy(dtype=float) * 100.0
    labels = [subset_label(str(s), modalities) for s in summary["subset"]]
    fig = Figure(figsize=(6.0, 8.5), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = colormaps["viridis"].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0.0, vmax=100.0, aspect="auto")
    ax.set_xticks(range(len(REGIONS)), labels=list(REGIONS))
    ax.set_yticks(range(len(labels)), labels=labels)
    ax.xaxis.tick_top()
    ax.axhline(len(modalities.subset_names) - 0.5, color="white", linewidth=3)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            text = f"{v:.1f}" if np.isfinite(v) else "n/a"
            colour = "white" if np.isfinite(v) and v < 60 else "black"  # viridis is dark below ~60 %
            weight = "bold" if i == len(labels) - 1 else "normal"
            ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=9, fontweight=weight)
    fig.colorbar(image, ax=ax, label="Dice (%)", shrink=0.8)
    fig.suptitle(title, fontsize=11)
    ax.set_ylabel("available sequences")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def check_reports_writable(
    output_dir: str | os.PathLike[str], overwrite: bool = False, flag: str = "--overwrite"
) -> None:
    """Raise before any work when a report file in ``output_dir`` is not lckd_med's to replace (the folder's
    ownership record, :class:`~lckd_med.utils.outputs.OwnedFiles`, does not list it with its current content).

    Raises:
        FileExistsError: naming the file and ``flag``; NotADirectoryError: ``output_dir`` is (under) a file.
    """
    OwnedFiles(output_dir, overwrite, flag).check(*REPORT_FILES.values())


def write_reports(
    df: pd.DataFrame,
    output_dir: str | os.PathLike[str],
    title: str = _DEFAULT_TITLE,
    caption: str | None = None,
    allow_partial: bool = False,
    modalities: ModalitySpec = BRATS,
    overwrite: bool = False,
    flag: str = "--overwrite",
) -> dict[str, Path]:
    """Write the long metrics CSV, the summary CSV and Markdown, and the Dice heat map, each atomically, and list them
    in the folder's ownership record.

    Args:
        df: long metrics table (see the module docstring).
        output_dir: directory, created if needed.
        title: heading of the Markdown and of the figure.
        caption: caption line under the Markdown table (default: units, statistics and empty rules).
        allow_partial: see :func:`summarize`.
        modalities: the spec whose subsets the table holds (default BraTS).
        overwrite: replace same-named files lckd_med did not write (see :func:`check_reports_writable`; callers
            check first, before their work); ``flag`` names it in the message.

    Returns:
        ``{"metrics_csv", "summary_csv", "summary_md", "heatmap_png"}`` -> written paths (see :data:`REPORT_FILES`).

    Raises:
        FileExistsError: a report file exists that lckd_med did not write (nothing is written).
    """
    table = validate_metrics_table(df, allow_partial=allow_partial, modalities=modalities)
    summary = summarize(table, allow_partial=allow_partial, modalities=modalities)
    owned = OwnedFiles(output_dir, overwrite, flag)
    owned.check(*REPORT_FILES.values())
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {key: out_dir / name for key, name in REPORT_FILES.items()}
    buf = io.StringIO()
    table.to_csv(buf, index=False)
    write_text_atomic(paths["metrics_csv"], buf.getvalue())
    buf = io.StringIO()
    summary.to_csv(buf, index=False)
    write_text_atomic(paths["summary_csv"], buf.getvalue())
    write_text_atomic(paths["summary_md"], format_table(summary, title=title, caption=caption, modalities=modalities))
    plot_dice_heatmap(summary, paths["heatmap_png"], title=title, modalities=modalities)
    owned.record(*REPORT_FILES.values())
    return paths


def read_summary(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a ``subset_summary.csv`` written by :func:`write_reports` and check its rows and columns."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"summary file not found: {path}")
    summary = pd.read_csv(path, dtype={"subset": str}, keep_default_na=False, na_values=[""])
    try:
        _check_summary(summary)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    summary["n_cases"] = summary["n_cases"].astype(int)
    return summary
