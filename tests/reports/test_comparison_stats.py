"""lckd_med.reports.comparison_stats: informative-subset means, the election record and the KD effect."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lckd_med.constants import MODALITIES, REGIONS, SUBSET_NAMES, parse_subset
from lckd_med.reports.comparison_stats import (
    TEACHER_MISSING,
    TEACHER_PRESENT,
    THRESHOLDS,
    election_rows,
    election_table,
    informative_means,
    informative_subsets,
    informative_table,
    kd_effect,
    kd_table,
)

INFORMATIVE = {"ET": "t1ce", "TC": "t1ce", "WT": "flair"}


def _metrics(cases=("a", "b", "c"), hit=0.8, miss=0.1, shift=0.0) -> pd.DataFrame:
    """Dice ``hit`` where the subset has the region's informative sequence, ``miss`` elsewhere, plus ``shift`` and a
    small per-case offset (so cases differ)."""
    rows = []
    for i, case in enumerate(cases):
        for subset in SUBSET_NAMES:
            for region in REGIONS:
                base = hit if INFORMATIVE[region] in parse_subset(subset) else miss
                rows.append({"case_id": case, "subset": subset, "region": region, "dice": base + shift + 0.01 * i})
    return pd.DataFrame(rows)


@pytest.mark.parametrize(("region", "present", "count"), [("ET", True, 8), ("WT", False, 7), ("TC", True, 8)])
def test_informative_subsets(region, present, count):
    subsets = informative_subsets(region, present)
    assert len(subsets) == count
    assert all((INFORMATIVE[region] in parse_subset(s)) == present for s in subsets)


def test_informative_subsets_rejects_an_unknown_region():
    with pytest.raises(ValueError, match="region"):
        informative_subsets("NCR")


def test_informative_means_ignore_the_other_subsets():
    means = informative_means(_metrics())
    assert means == pytest.approx({"ET": 0.81, "TC": 0.81, "WT": 0.81})
    with pytest.raises(ValueError, match="columns"):
        informative_means(pd.DataFrame({"case_id": ["a"]}))


@pytest.mark.parametrize(
    ("by_seed", "ok", "note"),
    [
        ({7: _metrics(), 8: _metrics()}, True, "met"),
        ({7: _metrics(), 8: _metrics(hit=THRESHOLDS["ET"] - 0.05)}, False, "below on ET, TC"),
        ({7: _metrics()}, False, "seeds [8] not run"),
    ],
)
def test_informative_table_checks_every_seed_against_the_bars(by_seed, ok, note):
    text, passed = informative_table({"lckd": by_seed}, {"lckd": "LCKD"}, [7, 8])
    assert passed == {"lckd": ok}
    row = [line for line in text.splitlines() if line.startswith("| LCKD")][0]
    assert note in row and ("not run" in row) == (8 not in by_seed)


def _election(seed_elected: dict[str, str], iteration: int = 300) -> pd.DataFrame:
    rows = [
        {
            "iteration": iteration,
            "modality": m,
            "region": r,
            "dice": 0.5 if m == seed_elected[r] else 0.1,
            "elected": "true" if m == seed_elected[r] else "false",
        }
        for m in MODALITIES
        for r in REGIONS
    ]
    return pd.DataFrame(rows)


def test_election_rows_mark_the_informative_choice():
    rows = election_rows({7: _election(INFORMATIVE), 8: _election({"ET": "t1ce", "TC": "t2", "WT": "flair"})})
    assert len(rows) == 6 and rows["as_expected"].sum() == 5
    wrong = rows[~rows["as_expected"]].iloc[0]
    assert (wrong["seed"], wrong["region"], wrong["elected"]) == (8, "TC", "t2")
    table = election_table(rows)
    assert table.count("\n") == 2 + 6 and "T2 (**not** the informative one)" in table and "T1ce 0.50" in table
    with pytest.raises(ValueError, match="columns"):
        election_rows({7: pd.DataFrame({"iteration": [1]})})


def test_kd_effect_pairs_cases_and_seeds():
    kd = {7: _metrics(shift=0.05), 8: _metrics(("x", "y"), shift=0.05)}
    nokd = {7: _metrics(), 8: _metrics(("x", "y")), 9: _metrics()}  # seed 9 has no LCKD run: ignored
    effect = kd_effect(kd, nokd, resamples=200)
    assert len(effect) == len(REGIONS) * (len(SUBSET_NAMES) + 2)
    assert effect["difference"].to_numpy() == pytest.approx(0.05)
    assert effect["ci_low"].to_numpy() == pytest.approx(0.05)  # the same difference in every unit
    single = effect[effect["subset"] == "flair"]
    assert single["units"].tolist() == [5, 5, 5]  # 3 cases of seed 7 + 2 of seed 8
    pooled = effect[(effect["subset"] == TEACHER_MISSING) & (effect["region"] == "ET")].iloc[0]
    assert pooled["kd"] == pytest.approx(0.15 + 0.01 * np.mean([0, 1, 2, 0, 1]))
    assert set(effect["subset"]) >= {TEACHER_MISSING, TEACHER_PRESENT}
    text = kd_table(effect)
    assert "**+5.0 [+5.0, +5.0]**" in text and f"*{TEACHER_MISSING}*" in text


@pytest.mark.parametrize(
    ("kd", "nokd", "match"),
    [
        ({7: _metrics()}, {8: _metrics()}, "share no seed"),
        ({7: _metrics(("a", "b"))}, {7: _metrics(("a", "z"))}, "other cases"),
    ],
)
def test_kd_effect_refuses_unpaired_runs(kd, nokd, match):
    with pytest.raises(ValueError, match=match):
        kd_effect(kd, nokd)


def test_kd_table_shows_an_interval_across_zero_plainly():
    noisy = _metrics(shift=0.0)
    noisy["dice"] += np.random.default_rng(0).normal(0, 0.05, len(noisy))
    text = kd_table(kd_effect({7: noisy}, {7: _metrics()}, resamples=200))
    flair = [line for line in text.splitlines() if line.startswith("| FLAIR |")][0]
    assert "[" in flair and flair.count("**") == 0
