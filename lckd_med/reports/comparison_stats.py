"""What a comparison of missing-modality methods must show: per method the Dice where the data carries each region,
LCKD's election record, and the distillation effect with a paired interval.

* **Informative-subset means** (:func:`informative_means`): for each region, the mean Dice over the subsets that
  contain the sequence carrying it (:data:`lckd_med.constants.INFORMATIVE_SEQUENCE`: T1ce for ET and TC, FLAIR for
  WT) -- 8 of the 15 subsets each. A method that learned a region must segment it there; the other subsets measure
  how it copes without that sequence. :data:`THRESHOLDS` are the bars of the CPU comparison (issue 19).
* **Election record** (:func:`election_rows`): for every election of LCKD's ``teacher_election.csv``, the modality
  elected per region and whether it is the informative one.
* **KD effect** (:func:`kd_effect`): LCKD minus LCKD-without-KD per subset and region (and pooled over the subsets
  where the region's teacher sequence is missing / present), the unit being a test case of one seed: both runs are
  scored on the same cases, so the per-unit differences are resampled (:func:`lckd_med.metrics.paired_bootstrap`).

Inputs are ``subset_metrics.csv`` tables (columns ``case_id, subset, region, dice``), one per seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from lckd_med.constants import INFORMATIVE_SEQUENCE, REGIONS, SUBSET_NAMES, parse_subset
from lckd_med.metrics import paired_bootstrap
from lckd_med.reports.subset_report import MODALITY_LABELS, subset_label

__all__ = [
    "THRESHOLDS",
    "TEACHER_MISSING",
    "TEACHER_PRESENT",
    "informative_subsets",
    "informative_means",
    "informative_table",
    "election_rows",
    "election_table",
    "kd_effect",
    "kd_table",
]

#: Minimum mean Dice over the informative subsets for a method to count as having learned a region (issue 19).
THRESHOLDS: dict[str, float] = {"ET": 0.4, "TC": 0.5, "WT": 0.6}
#: Pooled rows of :func:`kd_effect`.
TEACHER_MISSING = "teacher sequence missing"
TEACHER_PRESENT = "teacher sequence present"


def informative_subsets(region: str, present: bool = True) -> tuple[str, ...]:
    """The canonical subsets that contain (``present``) or lack the sequence carrying ``region``.

    Raises:
        ValueError: unknown region.
    """
    if region not in INFORMATIVE_SEQUENCE:
        raise ValueError(f"region must be one of {list(INFORMATIVE_SEQUENCE)}, got {region!r}")
    seq = INFORMATIVE_SEQUENCE[region]
    return tuple(s for s in SUBSET_NAMES if (seq in parse_subset(s)) == present)


def _check(table: pd.DataFrame, what: str) -> pd.DataFrame:
    missing = {"case_id", "subset", "region", "dice"} - set(table.columns)
    if missing:
        raise ValueError(f"{what} lacks the columns {sorted(missing)}")
    return table


def informative_means(metrics: pd.DataFrame) -> dict[str, float]:
    """Region -> mean Dice over the subsets that contain its informative sequence (mean over subsets of the mean
    over cases; NaN when the table has none of them)."""
    _check(metrics, "metrics table")
    out = {}
    for region in REGIONS:
        part = metrics[(metrics["region"] == region) & metrics["subset"].isin(informative_subsets(region))]
        per_subset = part.groupby("subset")["dice"].mean()
        out[region] = float(per_subset.mean()) if len(per_subset) else float("nan")
    return out


def _pct(value: float) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{100.0 * value:.1f}"


def informative_table(
    metrics: Mapping[str, Mapping[int, pd.DataFrame]], labels: Mapping[str, str], seeds: Sequence[int]
) -> tuple[str, dict[str, bool]]:
    """Markdown table: one row per method, mean Dice (%) over the informative subsets per seed and region, then
    the mean over the seeds; a region meets its bar when every listed seed ran and the mean of each seed is at least
    :data:`THRESHOLDS`.

    Args:
        metrics: method -> seed -> ``subset_metrics.csv`` table (a seed absent: the method did not finish on it).
        labels: method -> label.
        seeds: the seeds the comparison asked for (columns, in order).

    Returns:
        ``(markdown, passed)`` where ``passed[method]`` is True when all three regions meet their bar on all seeds.
    """
    header = ["Method", *[f"{r} seed {s}" for r in REGIONS for s in seeds], *[f"{r} mean" for r in REGIONS], "bars"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---", *["---:"] * (len(header) - 2), ":---"]) + "|"]
    passed: dict[str, bool] = {}
    for name, by_seed in metrics.items():
        per_seed = {s: informative_means(by_seed[s]) for s in seeds if s in by_seed}
        cells = [labels.get(name, name)]
        cells += [_pct(per_seed[s][r]) if s in per_seed else "not run" for r in REGIONS for s in seeds]
        means = {r: float(np.mean([v[r] for v in per_seed.values()])) if per_seed else float("nan") for r in REGIONS}
        cells += [_pct(means[r]) for r in REGIONS]
        failed = [r for r in REGIONS if any(not (per_seed[s][r] >= THRESHOLDS[r]) for s in per_seed)]  # NaN fails too
        absent = [s for s in seeds if s not in per_seed]
        ok = not failed and not absent
        passed[name] = ok
        note = (
            "met"
            if ok
            else "; ".join(
                ([f"below on {', '.join(failed)}"] if failed else []) + ([f"seeds {absent} not run"] if absent else [])
            )
        )
        cells.append(note)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n", passed


def election_rows(elections: Mapping[int, pd.DataFrame]) -> pd.DataFrame:
    """One row per (seed, election iteration, region): elected modality, its score, the informative sequence and
    whether they agree.

    Args:
        elections: seed -> ``teacher_election.csv`` table (``iteration, modality, region, dice, elected``).
    """
    rows = []
    for seed, table in elections.items():
        missing = {"iteration", "modality", "region", "dice", "elected"} - set(table.columns)
        if missing:
            raise ValueError(f"election record of seed {seed} lacks the columns {sorted(missing)}")
        elected = table[table["elected"].astype(str).str.lower() == "true"]
        for (iteration, region), part in elected.groupby(["iteration", "region"], sort=True):
            row = part.iloc[0]
            scores = table[(table["iteration"] == iteration) & (table["region"] == region)]
            rows.append(
                {
                    "seed": int(seed),
                    "iteration": int(iteration),
                    "region": str(region),
                    "elected": str(row["modality"]),
                    "dice": float(row["dice"]),
                    "scores": ", ".join(
                        f"{MODALITY_LABELS.get(m, m)} {float(d):.2f}"
                        for m, d in zip(scores["modality"], scores["dice"], strict=True)
                    ),
                    "expected": INFORMATIVE_SEQUENCE.get(str(region), ""),
                }
            )
    out = pd.DataFrame(rows, columns=["seed", "iteration", "region", "elected", "dice", "scores", "expected"])
    out["as_expected"] = out["elected"] == out["expected"]
    return out


def election_table(rows: pd.DataFrame) -> str:
    """Markdown table of :func:`election_rows` (region order ET, TC, WT within each election)."""
    lines = [
        "| Seed | Iteration | Region | Elected | Expected | Single-sequence soft Dice |",
        "|---:|---:|:---|:---|:---|:---|",
    ]
    order = {r: i for i, r in enumerate(REGIONS)}
    rows = rows.assign(_o=rows["region"].map(order)).sort_values(["seed", "iteration", "_o"])
    for _, r in rows.iterrows():
        mark = "" if r["as_expected"] else " (**not** the informative one)"
        lines.append(
            f"| {r['seed']} | {r['iteration']} | {r['region']} | {MODALITY_LABELS.get(r['elected'], r['elected'])}"
            f"{mark} | {MODALITY_LABELS.get(r['expected'], r['expected'])} | {r['scores']} |"
        )
    return "\n".join(lines) + "\n"


def _units(tables: Mapping[int, pd.DataFrame], what: str) -> pd.DataFrame:
    """(seed:case, subset) x region Dice, one table for all seeds."""
    frames = []
    for seed, table in tables.items():
        _check(table, what)
        frame = table[["case_id", "subset", "region", "dice"]].copy()
        frame["unit"] = f"{seed}:" + frame["case_id"].astype(str)
        frames.append(frame)
    if not frames:
        raise ValueError(f"{what}: no seed")
    return pd.concat(frames).pivot_table(index=["unit", "subset"], columns="region", values="dice", aggfunc="mean")


def kd_effect(
    with_kd: Mapping[int, pd.DataFrame], without_kd: Mapping[int, pd.DataFrame], resamples: int = 2000
) -> pd.DataFrame:
    """LCKD minus LCKD-without-KD per subset and region, with a paired bootstrap 95 % interval over (seed, case).

    Only seeds present in both are used. Besides the 15 subsets, two pooled rows per region: the subsets lacking
    the region's informative (teacher) sequence, and those containing it (each unit's Dice averaged over them).

    Returns:
        rows ``subset, region, kd, no_kd, difference, ci_low, ci_high, units`` (Dice as fractions).

    Raises:
        ValueError: no common seed, or the runs were scored on other cases.
    """
    seeds = [s for s in with_kd if s in without_kd]
    if not seeds:
        raise ValueError("LCKD and LCKD-without-KD share no seed")
    a = _units({s: with_kd[s] for s in seeds}, "LCKD metrics")
    b = _units({s: without_kd[s] for s in seeds}, "LCKD-without-KD metrics")
    if sorted(a.index) != sorted(b.index):
        raise ValueError("LCKD and LCKD-without-KD were scored on other cases or subsets")
    b = b.loc[a.index]
    rows = []

    def add(subset: str, region: str, x: pd.Series, y: pd.Series) -> None:
        mean, low, high = paired_bootstrap((x - y).to_numpy(), resamples=resamples)
        rows.append(
            {
                "subset": subset,
                "region": region,
                "kd": float(x.mean()),
                "no_kd": float(y.mean()),
                "difference": mean,
                "ci_low": low,
                "ci_high": high,
                "units": int(np.isfinite((x - y).to_numpy()).sum()),
            }
        )

    subsets = a.index.get_level_values("subset")
    for region in REGIONS:
        for subset in SUBSET_NAMES:
            sel = subsets == subset
            if sel.any():
                add(subset, region, a.loc[sel, region], b.loc[sel, region])
        for label, present in ((TEACHER_MISSING, False), (TEACHER_PRESENT, True)):
            sel = np.isin(subsets, informative_subsets(region, present))
            if sel.any():
                units = a.index[sel].get_level_values("unit")
                add(label, region, a.loc[sel, region].groupby(units).mean(), b.loc[sel, region].groupby(units).mean())
    return pd.DataFrame(rows, columns=["subset", "region", "kd", "no_kd", "difference", "ci_low", "ci_high", "units"])


def kd_table(effect: pd.DataFrame) -> str:
    """Markdown table of :func:`kd_effect`: one row per subset (then the pooled rows), per region the difference in
    Dice points with its interval; an interval excluding 0 is in bold."""
    header = ["Subset", *[f"{r} LCKD − no KD [95 % CI]" for r in REGIONS]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---", *["---:"] * len(REGIONS)]) + "|"]
    for subset in [*SUBSET_NAMES, TEACHER_MISSING, TEACHER_PRESENT]:
        part = effect[effect["subset"] == subset]
        if part.empty:
            continue
        cells = [subset_label(subset) if subset in SUBSET_NAMES else f"*{subset}*"]
        for region in REGIONS:
            row = part[part["region"] == region]
            if row.empty or not np.isfinite(row["difference"].iloc[0]):
                cells.append("n/a")
                continue
            d, lo, hi = (100.0 * float(row[c].iloc[0]) for c in ("difference", "ci_low", "ci_high"))
            text = f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}]"
            cells.append(f"**{text}**" if lo > 0 or hi < 0 else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
