"""Tests for lckd_med.reports.subset_report: validation, summary statistics, Markdown, files written."""

from __future__ import annotations

import math

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from lckd_med.constants import REGIONS, SUBSET_NAMES
from lckd_med.metrics.brats import case_region_metrics
from lckd_med.reports.subset_report import (
    MEAN_ROW,
    REPORT_FILES,
    format_table,
    read_summary,
    rows_from_case_metrics,
    subset_label,
    summarize,
    validate_metrics_table,
    write_reports,
)
from lckd_med.utils.outputs import OWNERSHIP_FILE


def _table(subsets=SUBSET_NAMES, pp: bool = False) -> pd.DataFrame:
    """Two cases per subset; subset k has Dice (0.2 + 0.02k, 0.4 + 0.02k) and HD95 (k, k + 2) on every region,
    region i adds 0.1 i to Dice."""
    rows = []
    for k, subset in enumerate(SUBSET_NAMES):
        if subset not in subsets:
            continue
        for c, (dice, hd) in enumerate([(0.2 + 0.02 * k, float(k)), (0.4 + 0.02 * k, float(k) + 2.0)]):
            for i, region in enumerate(REGIONS):
                row = {"case_id": f"c{c}", "subset": subset, "region": region, "dice": dice + 0.1 * i, "hd95": hd}
                if pp:
                    row["dice_pp"] = dice + 0.05 if region == "ET" else math.nan
                    row["hd95_pp"] = hd + 1.0 if region == "ET" else math.nan
                rows.append(row)
    return pd.DataFrame(rows)


def test_summary_order_values_and_mean_row():
    df = _table().sample(frac=1.0, random_state=0)  # row order must not matter
    summary = summarize(df)
    assert summary["subset"].tolist() == [*SUBSET_NAMES, MEAN_ROW]
    assert summary["n_cases"].tolist() == [2] * 16
    assert list(summary.columns[:4]) == ["subset", "n_cases", "ET_dice_mean", "ET_dice_std"]
    assert summary.columns[-1] == "WT_hd95_std"
    for k in range(len(SUBSET_NAMES)):
        row = summary.iloc[k]
        for i, region in enumerate(REGIONS):
            assert row[f"{region}_dice_mean"] == pytest.approx(0.3 + 0.02 * k + 0.1 * i)
            assert row[f"{region}_dice_std"] == pytest.approx(0.2 / math.sqrt(2))  # sample std (ddof=1)
            assert row[f"{region}_hd95_mean"] == pytest.approx(k + 1.0)
            assert row[f"{region}_hd95_std"] == pytest.approx(math.sqrt(2))
    mean = summary.iloc[-1]
    assert mean["ET_dice_mean"] == pytest.approx(0.3 + 0.02 * 7)  # mean over k = 0..14
    assert mean["WT_hd95_mean"] == pytest.approx(8.0)
    assert mean["TC_dice_std"] == pytest.approx(0.2 / math.sqrt(2))


def test_single_case_std_is_nan():
    df = _table()
    summary = summarize(df[df["case_id"] == "c0"])
    assert summary["n_cases"].tolist() == [1] * 16
    assert summary["ET_dice_std"].isna().all()


def test_partial_table_requires_allow_partial():
    df = _table(subsets=SUBSET_NAMES[:3])
    with pytest.raises(ValueError, match=r"absent.*flair\+t1"):
        summarize(df)
    summary = summarize(df, allow_partial=True)
    assert summary["subset"].tolist() == [*SUBSET_NAMES, MEAN_ROW]
    assert summary["n_cases"].tolist()[:4] == [2, 2, 2, 0]
    assert summary.iloc[3:15]["ET_dice_mean"].isna().all()
    assert summary.iloc[-1]["ET_dice_mean"] == pytest.approx(0.3 + 0.02)  # mean of k = 0, 1, 2 only
    assert "3 of 15 subsets" in format_table(summary)


def test_post_processed_columns():
    summary = summarize(_table(pp=True))
    assert summary.loc[0, "ET_pp_dice_mean"] == pytest.approx(0.35)
    assert summary.loc[0, "ET_pp_hd95_mean"] == pytest.approx(2.0)
    text = format_table(summary)
    header = next(line for line in text.splitlines() if line.startswith("| Subset"))
    assert header.index("ET Dice %") < header.index("ET pp Dice %") < header.index("TC Dice %")
    assert "| FLAIR | 2 | 30.0 ± 14.1 | 35.0 ± 14.1 |" in text


def _drop(df, col):
    return df.drop(columns=[col])


def _set(col, value, row=0):
    def f(df):
        df = df.copy()
        df[col] = df[col].astype(object)
        df.loc[row, col] = value
        return df

    return f


BAD_TABLES = [
    ("missing_column", lambda df: _drop(df, "hd95"), r"lacks columns \['hd95'\]"),
    ("unknown_subset", _set("subset", "t2+t1ce"), r"unknown subset names \['t2\+t1ce'\].*'t1ce\+t2'"),
    ("unknown_region", _set("region", "NCR"), r"unknown region names \['NCR'\]"),
    ("dice_percent", lambda df: df.assign(dice=df["dice"] * 100), r"\[0, 1\].*percentages"),
    ("dice_nan", _set("dice", math.nan), "missing or non-numeric"),
    ("hd95_negative", _set("hd95", -1.0), ">= 0"),
    ("duplicate_row", lambda df: pd.concat([df, df.iloc[:1]], ignore_index=True), "duplicate"),
    ("missing_region", lambda df: df.iloc[1:].reset_index(drop=True), "lack some of the regions"),
    ("empty", lambda df: df.iloc[:0], "empty"),
    ("pp_nan_on_et", lambda df: _set("dice_pp", math.nan)(df), "dice_pp"),
]


@pytest.mark.parametrize("name, corrupt, match", BAD_TABLES, ids=[b[0] for b in BAD_TABLES])
def test_bad_tables_raise(name, corrupt, match):
    with pytest.raises(ValueError, match=match):
        summarize(corrupt(_table(pp=True)))


def test_non_dataframe_raises():
    with pytest.raises(TypeError, match="DataFrame"):
        validate_metrics_table([{"case_id": "a"}])


def test_validate_sorts_canonically():
    df = _table().iloc[::-1].reset_index(drop=True)
    out = validate_metrics_table(df)
    assert list(out.columns) == ["case_id", "subset", "region", "dice", "hd95"]
    assert out["subset"].drop_duplicates().tolist() == list(SUBSET_NAMES)
    assert out["region"].tolist()[:3] == list(REGIONS)


@pytest.mark.parametrize(
    "name, label", [("flair", "FLAIR"), ("flair+t1ce", "FLAIR+T1ce"), ("t1+t1ce+t2", "T1+T1ce+T2"), ("mean", "Mean")]
)
def test_subset_label(name, label):
    assert subset_label(name) == label


def test_rows_from_case_metrics_round_trip():
    gt = np.zeros((3, 8, 8, 8), bool)
    gt[:, 2:6, 2:6, 2:6] = True
    metrics = case_region_metrics(gt, gt)
    rows = rows_from_case_metrics("case1", "t1ce+t2", metrics, metrics_pp=metrics)
    assert [r["region"] for r in rows] == list(REGIONS)
    assert rows[0]["dice_pp"] == 1.0 and math.isnan(rows[1]["dice_pp"])
    with pytest.raises(ValueError, match="unknown subset"):
        rows_from_case_metrics("case1", "t2+t1ce", metrics)
    with pytest.raises(ValueError, match="lack regions"):
        rows_from_case_metrics("case1", "t2", {"ET": metrics["ET"]})


def test_write_reports_files(tmp_path):
    out_dir = tmp_path / "reports"
    df = _table(pp=True)
    paths = write_reports(df, out_dir, title="Test run", caption="My caption.")
    assert set(paths) == set(REPORT_FILES)
    # no temp files left; the ownership record lists the reports
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([*REPORT_FILES.values(), OWNERSHIP_FILE])

    long = pd.read_csv(paths["metrics_csv"])
    assert len(long) == len(df) and list(long.columns[:5]) == ["case_id", "subset", "region", "dice", "hd95"]

    summary = read_summary(paths["summary_csv"])
    pd.testing.assert_frame_equal(summary, summarize(df), check_dtype=False)

    text = paths["summary_md"].read_text(encoding="utf-8")
    assert text.startswith("## Test run")
    assert text == format_table(summary, title="Test run", caption="My caption.")
    table_lines = [line for line in text.splitlines() if line.startswith("|")]
    data_rows = table_lines[2:]
    assert len(data_rows) == 16
    assert data_rows[0].startswith("| FLAIR |") and data_rows[-1].startswith("| Mean |")
    assert text.rstrip().endswith("My caption.")

    image = matplotlib.image.imread(paths["heatmap_png"])
    assert image.ndim == 3 and image.shape[0] > 600 and image.shape[1] > 400

    # Writing again over existing files works and still leaves no temp files.
    write_reports(df, out_dir)
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([*REPORT_FILES.values(), OWNERSHIP_FILE])


def test_write_reports_partial(tmp_path):
    paths = write_reports(_table(subsets=SUBSET_NAMES[-2:]), tmp_path, allow_partial=True)
    summary = read_summary(paths["summary_csv"])
    assert summary["n_cases"].tolist()[:13] == [0] * 13
    assert summary["ET_dice_mean"].isna().sum() == 13
    assert "n/a" in paths["summary_md"].read_text(encoding="utf-8")
    assert paths["heatmap_png"].stat().st_size > 0


def test_write_reports_rejects_bad_table_before_writing(tmp_path):
    with pytest.raises(ValueError, match="absent"):
        write_reports(_table(subsets=SUBSET_NAMES[:1]), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_read_summary_rejects_wrong_rows(tmp_path):
    path = tmp_path / "subset_summary.csv"
    summarize(_table()).iloc[::-1].to_csv(path, index=False)
    with pytest.raises(ValueError, match="canonical order"):
        read_summary(path)


def test_read_summary_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_summary(tmp_path / "nope.csv")


def test_format_table_rejects_non_summary():
    with pytest.raises(ValueError, match="lacks columns"):
        format_table(_table())
