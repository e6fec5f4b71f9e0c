"""Compare every registered method (LCKD, LCKD without distillation, an all-four-sequences model, OMD, HeMIS, ...)
on one dataset and budget.

``python -m lckd_med.compare [--runs lckd omd ...]`` writes a synthetic BraTS-layout dataset (or uses
``--dataset_dir``), then trains and evaluates one model per method of :data:`lckd_med.methods.METHODS` through the
real bundles -- ``python -m monai.bundle run training|evaluate`` with the demo overlay plus command-line overrides,
each command printed before it runs -- on the same data, split, seed, crop, network width and number of iterations.
Each run uses its method's bundle (``bundles/<method>/``, an overlay of LCKD's) or, for a method without one, LCKD's
bundle with ``method_name`` set; the short budget scales each recipe (:func:`default_runs`):

* a method whose bundle starts with an all-sequence phase (LCKD's two phases) gets half the iterations in it;
* a method that never drops sequences (all4) stays in that phase (missing sequences at test time are mean-filled
  by its network);
* a method that elects teachers (it takes the ``teacher_state`` the election updates: LCKD) elects at the switch,
  and halfway through the second phase (the reference elects every 5,000 of its 35,000 phase-2 iterations: a model
  trained on all four sequences scores every sequence alone near 0, so the switch's election alone is a coin toss),
  and, as in the reference, not after the last step: training distils from every election's teachers; on LCKD's
  bundle, the other methods run without the election;
* a method whose network has its own presets (RFNet, mmFormer: ``published``) builds its default preset in place of
  the budget's U-Net preset (mmFormer's window is the budget's crop), and a fused-term start
  (``fusion_start_iteration``, RFNet's 3000 of 45000) is scaled to the same fraction of the budget.

A method runs in a budget when its network can be built in the budget's network size, or at its own default preset
when it has only its own (RFNet, mmFormer) (:func:`preset_methods`); one that cannot is left out of that budget and
the page says why.

``--seeds 7 8 9`` repeats everything per seed, each seed with its own synthetic dataset, split and training seed, in
``<work_dir>/seed<N>/`` (``data/``, ``datalist.json``, one folder per method with ``train.log``, ``evaluate.log``,
``output/`` and ``run.json``, the record of a finished run: its settings, commands, times and package version).
``--reuse_finished`` keeps every run whose record holds the same settings; ``--report_only`` trains nothing and
writes the page from the finished runs (the others are listed as not run).

Every model is evaluated on the 15 subsets of the held-out ``testing`` split (the bundles' SubsetEvaluator). The
per-subset mean Dice, pooled over the seeds' test cases, is written as one Markdown table (``comparison.md``) and
one figure (``comparison_dice.png``) in ``--docs_dir``; the page then gives, from
:mod:`lckd_med.reports.comparison_stats`, each method's mean Dice over the subsets that contain the sequence
carrying each region (against the bars of the CPU comparison), LCKD's election record and LCKD minus
LCKD-without-KD per subset with a paired bootstrap interval over cases and seeds. The caption states the data,
seeds, spacing, iterations, hardware, wall times and the exact command. On CPU the budget is short and the data
synthetic: the numbers show whether each method learns what the data lets it learn, not how it does on BraTS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lckd_med import __version__
from lckd_med.constants import REGIONS, SUBSET_NAMES
from lckd_med.data.datalist import read_datalist, split_counts
from lckd_med.data.synthetic import MAX_SPACING, MIN_SPACING
from lckd_med.demo import BASE_BUNDLE, bundle_command, demo_configs, method_bundles
from lckd_med.engines.workflow import bundle_dir
from lckd_med.methods import METHODS, method_parameters
from lckd_med.networks.presets import PRESETS as UNET_PRESETS
from lckd_med.reports import MEAN_ROW, REPORT_FILES, subset_label
from lckd_med.utils.io import atomic_path, write_text_atomic
from lckd_med.utils.parse import arg_type, parse_float, parse_int

__all__ = [
    "RunSpec",
    "default_runs",
    "PRESETS",
    "RUN_RECORD",
    "preset_methods",
    "common_overrides",
    "finished_run",
    "run_settings",
    "comparison_report",
    "comparison_table",
    "plot_comparison",
    "write_comparison",
    "hardware_description",
    "main",
]

COMPARISON_MD = "comparison.md"
COMPARISON_PNG = "comparison_dice.png"

#: Budgets per preset (``auto`` picks ``gpu`` when CUDA is available, else ``cpu``).
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "cases": 24,
        "spacing": 2.0,
        "iterations": 600,
        "roi": [48, 48, 48],
        # the demo's network: the lean design (strided stem) at CPU widths did not learn ET and TC on every dataset
        # at this budget where this full-resolution one did (docs/performance.md)
        "network_preset": "fullres",
        "filters": [8, 16, 32, 64],
        # pinned: the demo overlay's value (mean-fill of missing sequences at every level), whatever bundle defaults
        "fill_levels": "all",
        "batch_size": 2,
        "optimizer": "adamw",
        "learning_rate": 0.003,
        "weight_decay": 1e-5,
        "val_max_cases": 4,
    },
    "gpu": {
        "cases": 60,
        "spacing": 2.0,
        "iterations": 3000,
        "roi": [64, 64, 64],
        "network_preset": "lean",
        "filters": [16, 32, 64, 128, 256],
        "fill_levels": None,  # the bundles' own
        "batch_size": 2,
        "optimizer": "adamw",
        "learning_rate": 0.003,
        "weight_decay": 1e-5,
        "val_max_cases": 4,
    },
}


@dataclass(frozen=True)
class RunSpec:
    """One model of the comparison.

    Attributes:
        name: run folder name and key of the results (the method's registered name).
        label: column/legend label.
        bundle: the bundle whose configs the run merges after LCKD's (``"lckd"``: LCKD's alone).
        overrides: bundle config overrides (``--key value``) specific to this run.
    """

    name: str
    label: str
    bundle: str
    overrides: dict[str, Any] = field(default_factory=dict)


def _elects(method: str) -> bool:
    """Whether ``method`` distils from elected teachers: it takes the ``teacher_state`` the election updates."""
    return "teacher_state" in method_parameters(method)


def _bundle_value(bundle: str, key: str) -> Any:
    """``key`` of ``bundle``'s training config (LCKD's unless its overlay sets it; None if neither does)."""
    value = json.loads((Path(bundle_dir(BASE_BUNDLE)) / "train.json").read_text()).get(key)
    if bundle != BASE_BUNDLE:
        value = json.loads((Path(bundle_dir(bundle)) / "train.json").read_text()).get(key, value)
    return value


def _bundle_phase1(bundle: str) -> int:
    """``phase1_iterations`` of ``bundle``'s training config (LCKD's unless its overlay sets it)."""
    return int(_bundle_value(bundle, "phase1_iterations"))


def _own_presets(method: str) -> bool:
    """Whether ``method``'s network comes only in its own presets (RFNet, mmFormer: ``published``), none of the
    U-Net presets a budget names."""
    return set(METHODS[method].presets).isdisjoint(UNET_PRESETS)


def default_runs(iterations: int) -> list[RunSpec]:
    """One run per registered method for a budget of ``iterations`` training iterations each (see the module
    docstring for how each recipe is scaled).

    LCKD's phase 1 (all sequences) takes the first half, as in the reference recipe's proportion (80k of 115k is
    70 %; half keeps enough missing-sequence iterations in a short budget); teachers are elected at the phase switch
    and halfway through phase 2, on at most ``val_max_cases`` validation cases. As in the reference (elections after
    the steps with ``i % 5000 == 0``, its last at 110,000 of 115,000), training follows every election and distils
    from its teachers: no election after the last step, whose teachers nothing would use.

    Raises:
        ValueError: ``iterations`` is not an int >= 2.
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 2:
        raise ValueError(f"iterations must be an int >= 2, got {iterations!r}")
    own = set(method_bundles())
    runs = []
    for name, cls in METHODS.items():
        bundle = name if name in own else BASE_BUNDLE
        over: dict[str, Any] = {} if bundle == name else {"method_name": name}
        if not cls.drops_modalities:  # phase1_iterations only keeps the LR schedule of the other runs
            over["phase1_iterations"] = iterations
        else:
            over["phase1_iterations"] = iterations // 2 if _bundle_phase1(bundle) > 0 else 0
        if _elects(name):  # at the switch and halfway through phase 2 (see the docstring)
            phase1 = over["phase1_iterations"]
            halfway = phase1 + (iterations - phase1) // 2  # == phase1 (or the last step): no room for a second one
            over |= {
                "election_interval": 0,
                "first_election": halfway if phase1 < halfway < iterations else None,
                "elect_at_phase_switch": phase1 > 0,
                # as in the reference, every election is followed by training that distils from its teachers
                "validate#election#elect_at_end": False,
            }
        elif bundle == BASE_BUNDLE:
            over["method_handlers"] = []  # LCKD's bundle elects teachers; this method has none
        if _own_presets(name):
            over["network_preset"] = cls.default_preset
        start = _bundle_value(bundle, "fusion_start_iteration")
        if start and "fusion_start_iteration" in method_parameters(name):  # the same fraction of the budget
            over["fusion_start_iteration"] = int(iterations * int(start) / int(_bundle_value(bundle, "num_iterations")))
        runs.append(RunSpec(name, cls.label, bundle, over))
    return runs


def _recipe(run: RunSpec) -> str:
    """One clause per run for the caption: its phases and, from its class docstring, its loss."""
    cls = METHODS[run.name]
    phase1 = int(run.overrides.get("phase1_iterations", 0))
    if not cls.drops_modalities:
        phases = "all sequences at every iteration"
    elif phase1 > 0:
        phases = f"all sequences for {phase1} iterations, then random missing sequences drawn per batch"
    else:
        phases = "random missing sequences from the first iteration"
    if _elects(run.name):
        phases += ", teachers elected at the switch and halfway through the rest"
    doc = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
    doc = re.sub(r":\w+:`~?(?:[\w.]+\.)?(\w+)`", r"\1", doc).replace("``", "`")  # reST roles -> Markdown
    return f"{run.label}: {phases} ({doc.rstrip('.')})"


def _format_value(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_format_value(v) for v in value) + "]"
    return str(value)


def overrides_argv(overrides: Mapping[str, Any]) -> list[str]:
    """``--key value`` arguments for ``python -m monai.bundle run`` (lists as ``[a,b]``).

    A top-level ``None`` is passed as the expression ``$None``: ``monai.bundle run`` silently drops keyword
    arguments whose value is ``None`` (``update_kwargs(ignore_none=True)``), so ``--key None`` would leave the
    config's value in place instead of setting it to ``None``.
    """
    argv: list[str] = []
    for key, value in overrides.items():
        argv += [f"--{key}", "$None" if value is None else _format_value(value)]
    return argv


def _cell(value: float, best: bool) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    text = f"{100.0 * value:.1f}"
    return f"**{text}**" if best else text


def _check_summaries(summaries: Mapping[str, pd.DataFrame], labels: Mapping[str, str]) -> list[str]:
    if not summaries:
        raise ValueError("need at least one run's summary")
    names = list(summaries)
    missing = [n for n in names if n not in labels]
    if missing:
        raise ValueError(f"no label for runs {missing}")
    expected = [*SUBSET_NAMES, MEAN_ROW]
    for name, summary in summaries.items():
        if summary["subset"].astype(str).tolist() != expected:
            raise ValueError(f"summary of {name!r} must have the 15 subsets in canonical order then {MEAN_ROW!r}")
        cols = [f"{r}_dice_mean" for r in REGIONS]
        if any(c not in summary.columns for c in cols):
            raise ValueError(f"summary of {name!r} lacks the columns {cols}")
    return names


def comparison_table(
    summaries: Mapping[str, pd.DataFrame], labels: Mapping[str, str], caption: str = "", title: str | None = None
) -> str:
    """Markdown table: one row per subset (canonical order) then Mean, mean Dice % per region and run.

    Columns are grouped by region (ET, TC, WT), one column per run inside each group; the best run of each row and
    region is in bold.

    Args:
        summaries: run name -> :func:`lckd_med.reports.summarize` table (16 rows).
        labels: run name -> column label.
        caption: text under the table.
        title: optional heading.
    """
    names = _check_summaries(summaries, labels)
    header = ["Subset"] + [f"{r} {labels[n]}" for r in REGIONS for n in names]
    lines = [f"## {title}", ""] if title else []
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join([":---", *["---:"] * (len(header) - 1)]) + "|")
    for i, subset in enumerate([*SUBSET_NAMES, MEAN_ROW]):
        cells = [f"**{subset_label(subset)}**" if subset == MEAN_ROW else subset_label(subset)]
        for region in REGIONS:
            values = [float(summaries[n][f"{region}_dice_mean"].iloc[i]) for n in names]
            finite = [v for v in values if np.isfinite(v)]
            top = round(max(finite) * 100, 1) if finite else None
            cells += [_cell(v, top is not None and np.isfinite(v) and round(v * 100, 1) == top) for v in values]
        lines.append("| " + " | ".join(cells) + " |")
    if caption:
        lines += ["", caption.strip()]
    return "\n".join(lines) + "\n"


def plot_comparison(
    summaries: Mapping[str, pd.DataFrame],
    labels: Mapping[str, str],
    path: str | os.PathLike,
    title: str = "Mean Dice by available sequences",
) -> Path:
    """Grouped bar chart of mean Dice (%) per subset and run, one panel per region; written atomically as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = _check_summaries(summaries, labels)
    path = Path(path)
    rows = [*SUBSET_NAMES, MEAN_ROW]
    x = np.arange(len(rows), dtype=float)
    x[-1] += 0.5  # a gap before the mean
    width = 0.8 / len(names)
    fig = Figure(figsize=(13.0, 9.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(REGIONS), 1, sharex=True)
    for ax, region in zip(axes, REGIONS, strict=True):
        for j, name in enumerate(names):
            values = summaries[name][f"{region}_dice_mean"].to_numpy(dtype=float) * 100.0
            ax.bar(x + (j - (len(names) - 1) / 2) * width, np.nan_to_num(values), width, label=labels[name])
        ax.set_ylabel(f"{region} Dice (%)")
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xticks(x, labels=[subset_label(s) for s in rows], rotation=45, ha="right")
    axes[0].legend(ncols=len(names), loc="upper left", fontsize=9)
    fig.suptitle(title, fontsize=12)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def write_comparison(
    summaries: Mapping[str, pd.DataFrame],
    labels: Mapping[str, str],
    docs_dir: str | os.PathLike,
    caption: str,
    title: str = "Missing-modality methods: mean Dice (%) per available-sequence subset",
) -> dict[str, Path]:
    """Write ``comparison.md`` (title, table, caption) and ``comparison_dice.png`` into ``docs_dir``."""
    docs = Path(docs_dir)
    md = docs / COMPARISON_MD
    write_text_atomic(md, comparison_table(summaries, labels, caption=caption, title=title))
    png = plot_comparison(summaries, labels, docs / COMPARISON_PNG, title=title)
    return {"md": md, "png": png}


def hardware_description() -> str:
    """The device the bundles run on: GPU name when CUDA is available, else the CPU model and core count."""
    import torch

    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name(0)}"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU only ({model}, {os.cpu_count()} cores)"


def _run(cmd: list[str], log: Path, dry_run: bool) -> float:
    print("\n$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    if dry_run:
        return 0.0
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-30:]
        raise RuntimeError(f"command failed with exit code {proc.returncode} (log {log}):\n" + "\n".join(tail))
    print(f"(finished in {elapsed:.0f} s; log {log})", flush=True)
    return elapsed


def _split_counts(datalist: Path) -> str:
    try:
        return ", ".join(f"{c['total']} {split}" for split, c in split_counts(read_datalist(datalist)).items())
    except (OSError, ValueError) as err:  # a report of finished runs whose datalist is gone or unreadable
        return f"unknown ({type(err).__name__} reading {datalist})"


def preset_methods(budget: Mapping[str, Any], names: Sequence[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The registered methods a budget runs, and why each other one is left out.

    The rule (one per method, no names): a method runs when its network can be built in the budget's network size,
    i.e. :meth:`~lckd_med.methods.base.TrainingMethod.build_network` accepts the budget's ``network_preset`` (and
    ``filters``/``fill_levels``); a method whose network has only its own presets (RFNet, mmFormer: ``published``)
    is built at its default preset, as :func:`default_runs` runs it (not at equal cost: the page gives each run's
    wall time). A method whose network cannot be built is left out of that budget, with the reason.

    Args:
        budget: a :data:`PRESETS` entry (after command-line overrides).
        names: the methods asked for (default: all of :data:`lckd_med.methods.METHODS`, in its order).

    Returns:
        ``(included, excluded)``: names in registry order, and name -> one-line reason.
    """
    included, excluded = [], {}
    for name in names or list(METHODS):
        cls = METHODS[name]
        preset = str(budget["network_preset"])
        options = {k: budget[k] for k in ("filters", "fill_levels") if budget.get(k) is not None}
        if _own_presets(name):  # as default_runs builds it
            preset, options = cls.default_preset, {}
        try:
            cls.build_network(preset, **options)
        except (ValueError, TypeError) as err:
            excluded[name] = f"its network has no {preset!r} size ({err})"
            continue
        included.append(name)
    return included, excluded


#: Per-run record written after a run's evaluation finished; ``--reuse_finished`` reuses a run only when the record
#: holds the same training and evaluation settings.
RUN_RECORD = "run.json"
#: Marker of a run folder compare made: only such a folder is replaced when its run is trained again.
RUN_MARKER = ".lckd_compare_run"


def _normalise(value: Any) -> Any:
    return json.loads(json.dumps(value))


def finished_run(run_dir: Path, train_over: Mapping[str, Any], eval_over: Mapping[str, Any]) -> dict | None:
    """The run record of ``run_dir`` when that run finished with exactly these settings, else None."""
    record_path = run_dir / RUN_RECORD
    summary = run_dir / "output" / REPORT_FILES["summary_csv"]
    if not (record_path.is_file() and summary.is_file()):
        return None
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("train_overrides") != _normalise(dict(train_over)):
        return None
    if record.get("eval_overrides") != _normalise(dict(eval_over)):
        return None
    return record


def _parse_seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}")
    return value


def _read_csv(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.is_file() else None


def comparison_report(
    work: Path,
    seeds: Sequence[int],
    names: Sequence[str],
    labels: Mapping[str, str],
    records: Mapping[str, Mapping[int, Mapping[str, Any]]],
) -> tuple[dict[str, pd.DataFrame], str, dict[str, bool], list[int]]:
    """Pooled per-subset summaries and the statistics sections (Markdown) of the finished runs in ``work``.

    Args:
        work: the comparison's folder (``seed<N>/<method>/output/`` under it).
        seeds: the seeds asked for.
        names: the methods asked for, in order.
        labels: method -> label.
        records: method -> seed -> run record, for the finished runs only.

    Returns:
        ``(summaries, markdown, passed, table_seeds)``: method -> :func:`lckd_med.reports.summarize` of its cases
        pooled over ``table_seeds`` (case ids prefixed with the seed): the seeds every method with a finished run
        has, or, when there is none, each method's own finished seeds (``table_seeds`` empty); the sections
        (informative-subset means against the bars, LCKD's elections, the KD effect, from every finished seed);
        method -> whether it met every bar on every seed.
    """
    from lckd_med.engines.election import ELECTION_FILE
    from lckd_med.reports import summarize
    from lckd_med.reports.comparison_stats import (
        THRESHOLDS,
        election_rows,
        election_table,
        informative_table,
        kd_effect,
        kd_table,
    )

    metrics: dict[str, dict[int, pd.DataFrame]] = {}
    for name in names:
        for seed in seeds:
            if seed in records.get(name, {}):
                table = _read_csv(work / f"seed{seed}" / name / "output" / REPORT_FILES["metrics_csv"])
                if table is not None:
                    metrics.setdefault(name, {})[seed] = table
    # the per-subset table compares the methods on the same cases: the seeds every method with a run finished
    table_seeds = [s for s in seeds if metrics and all(s in by_seed for by_seed in metrics.values())]
    summaries = {}
    for name, by_seed in metrics.items():
        use = table_seeds or list(by_seed)
        pooled = pd.concat([by_seed[s].assign(case_id=f"{s}:" + by_seed[s]["case_id"].astype(str)) for s in use])
        summaries[name] = summarize(pooled)
    bars = ", ".join(f"{r} >= {100 * v:g} %" for r, v in THRESHOLDS.items())
    parts = [
        "## Where the data carries each region",
        "",
        "Mean Dice (%) over the subsets that contain the sequence carrying the region (T1ce for ET and TC, FLAIR for "
        f"WT; 8 of the 15 subsets each), per seed and averaged over seeds. Bars (issue 19): {bars} on every seed.",
        "",
    ]
    table, passed = informative_table({n: metrics.get(n, {}) for n in names}, labels, seeds)
    parts.append(table)
    elections = {}
    for name in names:
        if "teacher_state" not in method_parameters(name):
            continue
        for seed in metrics.get(name, {}):
            found = _read_csv(work / f"seed{seed}" / name / "output" / ELECTION_FILE)
            if found is not None:
                elections[seed] = found
        if elections:
            rows = election_rows(elections)
            agree = int(rows["as_expected"].sum())
            last = rows[rows["iteration"] == rows.groupby("seed")["iteration"].transform("max")]
            parts += [
                f"## {labels[name]}'s teacher elections",
                "",
                f"{agree} of {len(rows)} region elections picked the informative sequence (T1ce for ET and TC, FLAIR "
                f"for WT); at each seed's last election (the rest of training distils from its teachers), "
                f"{int(last['as_expected'].sum())} of {len(last)}. Scores: soft "
                "Dice of each sequence alone on the validation cases at the election.",
                "",
                election_table(rows),
            ]
        break
    if "lckd" in metrics and "lckd_nokd" in metrics:
        common = [s for s in seeds if s in metrics["lckd"] and s in metrics["lckd_nokd"]]
        if common:
            effect = kd_effect({s: metrics["lckd"][s] for s in common}, {s: metrics["lckd_nokd"][s] for s in common})
            units = int(effect["units"].max())
            parts += [
                "## Distillation: LCKD minus LCKD without KD",
                "",
                f"Difference of mean Dice (points) per subset, paired over the test cases of seeds {common} "
                f"({units} case-seed pairs); 95 % paired bootstrap interval (2,000 resamples, "
                "`lckd_med.metrics.paired_bootstrap`); bold = the interval excludes 0"
                + (
                    f" (with {units} pairs a percentile bootstrap interval is too narrow: read bold cells as "
                    "indications, not findings)"
                    if units < 30
                    else ""
                )
                + ". The pooled rows average each "
                "case's Dice over the subsets that lack / contain the region's teacher sequence (T1ce for ET and TC, "
                'FLAIR for WT): "distillation helps where the teacher is missing" is the first pooled row.',
                "",
                kd_table(effect),
            ]
    return summaries, "\n".join(parts), passed, table_seeds


def common_overrides(budget: Mapping[str, Any]) -> dict[str, Any]:
    """The bundle overrides every run of ``budget`` (a :data:`PRESETS` entry after command-line overrides) gets."""
    common = {
        "num_iterations": int(budget["iterations"]),
        "epoch_length": max(1, min(50, int(budget["iterations"]) // 2)),
        "roi_size": list(budget["roi"]),
        "network_preset": str(budget["network_preset"]),
        "filters": list(budget["filters"]) if budget["filters"] is not None else None,
        "batch_size": int(budget["batch_size"]),
        "optimizer_name": str(budget["optimizer"]),
        "learning_rate": float(budget["learning_rate"]),
        "weight_decay": float(budget["weight_decay"]),
        "num_workers": 0,
        "save_every_epochs": 1000,
        "log_every": max(1, int(budget["iterations"]) // 10),
    }
    if budget.get("fill_levels") is not None:
        common["fill_levels"] = str(budget["fill_levels"])
    return common


def run_settings(
    run: RunSpec,
    seed: int,
    dataset: Path,
    datalist: Path,
    run_dir: Path,
    common: Mapping[str, Any],
    budget: Mapping[str, Any],
    max_eval_cases: int | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The training and evaluation overrides of one run (what its :data:`RUN_RECORD` must hold to be reused)."""
    ckpt_dir, out_dir = run_dir / "models", run_dir / "output"
    train_over = {
        "dataset_dir": str(dataset),
        "datalist": str(datalist),
        "seed": seed,
        **common,
        **run.overrides,
        "ckpt_dir": str(ckpt_dir),
        "output_dir": str(out_dir),
    }
    if _elects(run.name):
        train_over["val_max_cases"] = int(budget["val_max_cases"])
    eval_over = {
        "dataset_dir": str(dataset),
        "datalist": str(datalist),
        "seed": seed,  # the datalist was made with it; evaluate checks
        "ckpt_dir": str(ckpt_dir),
        "output_dir": str(out_dir),
        "roi_size": list(budget["roi"]),
        "max_cases": max_eval_cases,
    }
    return train_over, eval_over


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lckd_med.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=["auto", *PRESETS], default="auto", help="budget (auto: gpu if CUDA)")
    parser.add_argument("--work_dir", default=None, help="runs folder (default bundles/omd/runs/compare)")
    parser.add_argument("--docs_dir", default=None, help="where comparison.md/.png go (default <repo>/docs)")
    parser.add_argument("--dataset_dir", default=None, help="BraTS folder (default: synthetic data per seed)")
    parser.add_argument(
        "--cases", type=arg_type(parse_int, "--cases", minimum=3), default=None, help="synthetic cases to write"
    )
    parser.add_argument(
        "--spacing",
        type=arg_type(parse_float, "--spacing", low=MIN_SPACING, high=MAX_SPACING),
        default=None,
        help="synthetic voxel size in mm",
    )
    parser.add_argument(
        "--iterations",
        type=arg_type(parse_int, "--iterations", minimum=2),
        default=None,
        help="training iterations of every run",
    )
    parser.add_argument(
        "--roi",
        type=arg_type(parse_int, "--roi", minimum=1),
        nargs=3,
        default=None,
        help="training crop = evaluation window",
    )
    parser.add_argument("--network_preset", default=None, help="network preset (lckd_med.networks.PRESETS)")
    parser.add_argument(
        "--filters",
        type=arg_type(parse_int, "--filters", minimum=1),
        nargs="+",
        default=None,
        help="network channels per level",
    )
    parser.add_argument("--batch_size", type=arg_type(parse_int, "--batch_size", minimum=1), default=None)
    parser.add_argument(
        "--learning_rate", type=arg_type(parse_float, "--learning_rate", low=0, low_open=True), default=None
    )
    parser.add_argument(
        "--max_eval_cases",
        type=arg_type(parse_int, "--max_eval_cases", minimum=1),
        default=None,
        help="evaluate only the first test cases",
    )
    parser.add_argument("--seed", type=_parse_seed, default=0, help="the seed when --seeds is not given")
    parser.add_argument(
        "--seeds", type=_parse_seed, nargs="+", default=None, help="seeds (data, split, training), one dataset each"
    )
    parser.add_argument("--runs", nargs="+", default=None, help=f"subset of the methods {' '.join(METHODS)}")
    parser.add_argument(
        "--reuse_finished",
        action="store_true",
        help=f"keep a run whose {RUN_RECORD} records the same settings instead of training it again",
    )
    parser.add_argument(
        "--report_only",
        action="store_true",
        help="train nothing: write the docs from the runs already finished with these settings (others: 'not run')",
    )
    parser.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)

    import torch

    preset_name = args.preset if args.preset != "auto" else ("gpu" if torch.cuda.is_available() else "cpu")
    budget = dict(PRESETS[preset_name])
    for key, value in (
        ("cases", args.cases),
        ("spacing", args.spacing),
        ("iterations", args.iterations),
        ("roi", args.roi),
        ("network_preset", args.network_preset),
        ("filters", args.filters),
        ("batch_size", args.batch_size),
        ("learning_rate", args.learning_rate),
    ):
        if value is not None:
            budget[key] = value
    seeds = list(dict.fromkeys(args.seeds if args.seeds else [args.seed]))
    repo = Path(__file__).resolve().parents[1]
    # absolute: the run records hold the paths, so a relative --work_dir must match the same runs from any folder
    work = Path(os.path.abspath(args.work_dir)) if args.work_dir else repo / "bundles" / "omd" / "runs" / "compare"
    docs = Path(args.docs_dir) if args.docs_dir else repo / "docs"
    runs = default_runs(int(budget["iterations"]))
    if args.runs:
        unknown = sorted(set(args.runs) - {r.name for r in runs})
        if unknown:
            parser.error(f"unknown runs {unknown}; choose from {[r.name for r in runs]}")
    included, excluded = preset_methods(budget, [r.name for r in runs if not args.runs or r.name in args.runs])
    runs = [r for r in runs if r.name in included]
    for name, reason in excluded.items():
        print(f"left out of the {preset_name} budget: {name}: {reason}", flush=True)
    command = "python -m lckd_med.compare" + "".join(" " + shlex.quote(a) for a in (argv or sys.argv[1:]))
    reuse = args.reuse_finished or args.report_only

    t_start = time.perf_counter()
    common = common_overrides(budget)
    records: dict[str, dict[int, dict[str, Any]]] = {}
    data_notes: dict[int, str] = {}
    for seed in seeds:
        seed_dir = work / f"seed{seed}"
        if args.dataset_dir:
            dataset = Path(os.path.abspath(args.dataset_dir))
            data_notes[seed] = f"{dataset}"
        else:
            dataset = seed_dir / "data"
            data_notes[seed] = f"synthetic seed {seed}"
            if not (args.dry_run or args.report_only):
                from lckd_med.engines.workflow import ensure_synthetic

                ensure_synthetic(dataset, cases=int(budget["cases"]), spacing=float(budget["spacing"]), seed=seed)
        datalist = seed_dir / "datalist.json"
        if not (args.dry_run or args.report_only or datalist.is_file()):
            from lckd_med.engines.workflow import prepare_datalist

            prepare_datalist(dataset, datalist, seed=seed)
        for run in runs:
            run_dir = seed_dir / run.name
            train_over, eval_over = run_settings(
                run, seed, dataset, datalist, run_dir, common, budget, args.max_eval_cases
            )
            train_cmd = bundle_command(
                "training", run.bundle, demo_configs(run.bundle, "training"), overrides_argv(train_over)
            )
            eval_cmd = bundle_command(
                "evaluate", run.bundle, demo_configs(run.bundle, "evaluate"), overrides_argv(eval_over)
            )
            found = finished_run(run_dir, train_over, eval_over) if reuse else None
            if found is not None:
                print(f"seed {seed} {run.name}: finished before ({run_dir / RUN_RECORD}), reused", flush=True)
                records.setdefault(run.name, {})[seed] = found
                continue
            if args.report_only:
                print(f"seed {seed} {run.name}: not finished with these settings, left out", flush=True)
                continue
            if not args.dry_run:
                if (
                    run_dir.exists()
                    and any(run_dir.iterdir())
                    and not any((run_dir / f).is_file() for f in (RUN_MARKER, RUN_RECORD))
                ):
                    raise FileExistsError(
                        f"{run_dir} exists and was not made by lckd_med.compare; it was left untouched: "
                        "move it away or choose another --work_dir"
                    )
                shutil.rmtree(run_dir, ignore_errors=True)  # compare's own earlier run of these settings
                run_dir.mkdir(parents=True)
                (run_dir / RUN_MARKER).write_text("made by lckd_med.compare\n", encoding="utf-8")
            t_train = _run(train_cmd, run_dir / "train.log", args.dry_run)
            t_eval = _run(eval_cmd, run_dir / "evaluate.log", args.dry_run)
            if args.dry_run:
                continue
            record = {
                "method": run.name,
                "label": run.label,
                "seed": seed,
                "preset": preset_name,
                "budget": _normalise(budget),
                "data": data_notes[seed],
                "train_overrides": _normalise(train_over),
                "eval_overrides": _normalise(eval_over),
                "train_command": " ".join(shlex.quote(c) for c in train_cmd),
                "eval_command": " ".join(shlex.quote(c) for c in eval_cmd),
                "compare_command": command,
                "train_s": round(t_train, 1),
                "eval_s": round(t_eval, 1),
                "hardware": hardware_description(),
                # --reuse_finished matches settings, not code: the version says which release trained the run
                "package_version": __version__,
                "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            }
            write_text_atomic(run_dir / RUN_RECORD, json.dumps(record, indent=2) + "\n")
            records.setdefault(run.name, {})[seed] = record
    if args.dry_run:
        return 0
    if not records:
        print("no finished run to report", file=sys.stderr)
        return 1

    names = [r.name for r in runs if r.name in records]
    labels = {r.name: r.label for r in runs}
    summaries, stats_md, passed, table_seeds = comparison_report(work, seeds, [r.name for r in runs], labels, records)
    wall = time.perf_counter() - t_start
    first_seed = next(s for s in seeds if any(s in records[n] for n in names))
    n_test = int(summaries[names[0]]["n_cases"].iloc[-1])
    per_run = "; ".join(
        f"{labels[n]} "
        + ", ".join(f"seed {s}: {r['train_s']:.0f} s + {r['eval_s']:.0f} s" for s, r in records[n].items())
        for n in names
    )
    ran = "; ".join(f"{labels[n]}: seeds {sorted(records[n])}" for n in names)
    missing = [f"{labels[r.name]} seed {s}" for r in runs for s in seeds if s not in records.get(r.name, {})]
    hardware = sorted({r["hardware"] for n in names for r in records[n].values()})
    recorded = [r.get("package_version") for n in names for r in records[n].values()]
    versions = ", ".join(sorted({v for v in recorded if v}))
    if all(recorded):
        trained_by = f"Trained by lckd_med {versions}"
    elif versions:
        trained_by = f"Trained by lckd_med {versions} and not recorded (older runs)"
    else:
        trained_by = "Package version not recorded (older runs)"
    short = (
        " **Short CPU budget on synthetic data: it shows whether each method learns what the data lets it learn, "
        "not how the methods do on BraTS.**"
        if preset_name == "cpu"
        else ""
    )
    data_note = (
        f"Data: {args.dataset_dir}"
        if args.dataset_dir
        else f"Data: {budget['cases']} synthetic BraTS2018-layout cases per seed (`lckd_med.data.synthetic`, "
        f"generator seed = run seed) at {budget['spacing']:g} mm"
    )
    caption = (
        (
            f"Mean Dice (%) over the held-out test cases of seeds {table_seeds} pooled (the seeds every method "
            f"finished; {n_test} case-seed pairs) "
            if table_seeds
            else f"Mean Dice (%) over the held-out test cases of each method's finished seeds pooled (no seed has "
            f"every method: the columns are not on the same cases; {n_test} case-seed pairs for {labels[names[0]]}) "
        )
        + f"for each set of available sequences; bold = best run per row and region; the sections below use every "
        f"finished seed. {data_note}; "
        f"split of seed {first_seed}: {_split_counts(work / f'seed{first_seed}' / 'datalist.json')} (5 folds, seed = "
        f"run seed). Seeds asked for: {seeds}; finished: {ran}"
        + (f"; **not finished: {', '.join(missing)}**" if missing else "")
        + f". Every run: {budget['iterations']} iterations, batch {budget['batch_size']}, crop "
        f"{'x'.join(map(str, budget['roi']))} (also the evaluation window), network preset {budget['network_preset']}"
        f"{'' if budget['filters'] is None else ' with filters ' + str(budget['filters'])}"
        f"{'' if budget.get('fill_levels') is None else ', fill_levels ' + str(budget['fill_levels'])}, "
        f"{budget['optimizer']} lr {budget['learning_rate']:g} (weight decay {budget['weight_decay']:g}) with the "
        f"bundles' poly schedule (LCKD's bundle: the reference's two-phase poly). "
        + "; ".join(_recipe(r) for r in runs if r.name in names)
        + (". Left out of this budget: " + "; ".join(f"{n}: {why}" for n, why in excluded.items()) if excluded else "")
        + f". Hardware: {', '.join(hardware)}. {trained_by}. Train + evaluate per run: {per_run}. Legacy BraTS "
        f"rules for empty regions; ET not post-processed. Command (re-running it with `--report_only` rewrites this "
        f"page from the finished runs in `{work}`): `{command}`.{short}"
    )
    title = " vs ".join(labels[n] for n in names) + ": mean Dice (%) per available-sequence subset"
    if preset_name == "cpu":
        title += " (synthetic data, short CPU budget)"
    verdict = (
        "**Every method met every bar on every seed asked for.**"
        if all(passed.get(r.name, False) for r in runs)
        else "**Not every method met every bar on every seed asked for (see the table below); the comparison's goal "
        "is not reached with these runs.**"
    )
    paths = write_comparison(summaries, {n: labels[n] for n in summaries}, docs, caption, title=title)
    text = paths["md"].read_text()
    write_text_atomic(paths["md"], text + "\n" + verdict + "\n\n" + stats_md)
    print(f"\nwrote {paths['md']} and {paths['png']} in {wall / 60:.1f} min")
    print(paths["md"].read_text())
    return 0


if __name__ == "__main__":
    from lckd_med.utils.errors import run_guarded

    raise SystemExit(
        run_guarded(main, prefix="lckd_med.compare: error", errors=(ValueError, TypeError, OSError, RuntimeError))
    )
