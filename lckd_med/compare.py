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
* a method that elects teachers (it takes the ``teacher_state`` the election updates: LCKD) elects once, at the
  switch; on LCKD's bundle, the other methods run without the election;
* a method whose network has its own presets (RFNet, mmFormer: ``published``) builds its default preset in place of
  the budget's U-Net preset (mmFormer's window is the budget's crop), and a fused-term start
  (``fusion_start_iteration``, RFNet's 3000 of 45000) is scaled to the same fraction of the budget.

Every model is evaluated on the 15 subsets of the held-out ``testing`` split (the bundles' SubsetEvaluator), and
the per-subset mean Dice of the runs is written as one Markdown table (``comparison.md``) and one figure
(``comparison_dice.png``) in ``--docs_dir``. The caption states the data, number of cases, spacing, iterations,
hardware, wall time and the exact command. On CPU the default budget is short: such numbers show that the
pipelines run and how the methods move relative to each other on synthetic data, not how they do on BraTS.
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

from lckd_med.constants import REGIONS, SUBSET_NAMES
from lckd_med.data.datalist import read_datalist, split_counts
from lckd_med.demo import BASE_BUNDLE, bundle_command, demo_configs, method_bundles
from lckd_med.engines.workflow import bundle_dir
from lckd_med.methods import METHODS, method_parameters
from lckd_med.networks.presets import PRESETS as UNET_PRESETS
from lckd_med.reports import MEAN_ROW, REPORT_FILES, read_summary, subset_label
from lckd_med.utils.io import atomic_path, write_text_atomic

__all__ = [
    "RunSpec",
    "default_runs",
    "PRESETS",
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
        "spacing": 3.0,
        "iterations": 300,
        "roi": [32, 32, 32],
        # the lean default scaled to the CPU; the lean stem with filters 8-64 (a 4-channel head) did not learn TC
        # or ET in this budget (docs/performance.md)
        "network_preset": "lean_small",
        "filters": None,
        "batch_size": 2,
        "optimizer": "adamw",
        "learning_rate": 0.003,
        "weight_decay": 1e-5,
        "val_max_cases": 2,
    },
    "gpu": {
        "cases": 60,
        "spacing": 2.0,
        "iterations": 3000,
        "roi": [64, 64, 64],
        "network_preset": "lean",
        "filters": [16, 32, 64, 128, 256],
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


def default_runs(iterations: int) -> list[RunSpec]:
    """One run per registered method for a budget of ``iterations`` training iterations each (see the module
    docstring for how each recipe is scaled).

    LCKD's phase 1 (all sequences) takes the first half, as in the reference recipe's proportion (80k of 115k is
    70 %; half keeps enough missing-sequence iterations in a short budget); teachers are elected once, at the phase
    switch, on at most ``val_max_cases`` validation cases.

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
        if _elects(name):  # one election, at the switch: the short budget has no room for the reference's schedule
            over |= {
                "election_interval": 0,
                "first_election": None,
                "elect_at_phase_switch": True,
                "validate#election#elect_at_end": False,
            }
        elif bundle == BASE_BUNDLE:
            over["method_handlers"] = []  # LCKD's bundle elects teachers; this method has none
        if set(cls.presets).isdisjoint(UNET_PRESETS):  # its own network presets (RFNet, mmFormer)
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
        phases += ", teachers elected once at the switch"
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
    return ", ".join(f"{c['total']} {split}" for split, c in split_counts(read_datalist(datalist)).items())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lckd_med.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=["auto", *PRESETS], default="auto", help="budget (auto: gpu if CUDA)")
    parser.add_argument("--work_dir", default=None, help="runs folder (default bundles/omd/runs/compare)")
    parser.add_argument("--docs_dir", default=None, help="where comparison.md/.png go (default <repo>/docs)")
    parser.add_argument("--dataset_dir", default=None, help="BraTS folder (default: synthetic data in work_dir)")
    parser.add_argument("--cases", type=int, default=None, help="synthetic cases to write")
    parser.add_argument("--spacing", type=float, default=None, help="synthetic voxel size in mm")
    parser.add_argument("--iterations", type=int, default=None, help="training iterations of every run")
    parser.add_argument("--roi", type=int, nargs=3, default=None, help="training crop = evaluation window")
    parser.add_argument("--network_preset", default=None, help="network preset (lckd_med.networks.PRESETS)")
    parser.add_argument("--filters", type=int, nargs="+", default=None, help="network channels per level")
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--learning_rate", type=float, default=None)
    parser.add_argument("--max_eval_cases", type=int, default=None, help="evaluate only the first test cases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", nargs="+", default=None, help=f"subset of the methods {' '.join(METHODS)}")
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
    repo = Path(__file__).resolve().parents[1]
    work = Path(args.work_dir) if args.work_dir else repo / "bundles" / "omd" / "runs" / "compare"
    docs = Path(args.docs_dir) if args.docs_dir else repo / "docs"
    runs = default_runs(int(budget["iterations"]))
    if args.runs:
        unknown = sorted(set(args.runs) - {r.name for r in runs})
        if unknown:
            parser.error(f"unknown runs {unknown}; choose from {[r.name for r in runs]}")
        runs = [r for r in runs if r.name in args.runs]
    command = "python -m lckd_med.compare" + "".join(" " + shlex.quote(a) for a in (argv or sys.argv[1:]))

    t_start = time.perf_counter()
    if args.dataset_dir:
        dataset = Path(args.dataset_dir)
        data_note = f"Data: {dataset}"
    else:
        dataset = work / "data"
        data_note = (
            f"Data: {budget['cases']} synthetic BraTS2018-layout cases (`lckd_med.data.synthetic`, seed {args.seed}) "
            f"at {budget['spacing']:g} mm"
        )
        if not args.dry_run:
            from lckd_med.engines.workflow import ensure_synthetic

            ensure_synthetic(dataset, cases=int(budget["cases"]), spacing=float(budget["spacing"]), seed=args.seed)
    datalist = work / "datalist.json"
    if not args.dry_run and not datalist.is_file():
        from lckd_med.engines.workflow import prepare_datalist

        prepare_datalist(dataset, datalist, seed=args.seed)

    common = {
        "dataset_dir": str(dataset),
        "datalist": str(datalist),
        "seed": args.seed,
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
    summaries: dict[str, pd.DataFrame] = {}
    timings: dict[str, tuple[float, float]] = {}
    for run in runs:
        ckpt_dir, out_dir = work / run.name / "models", work / run.name / "output"
        if not args.dry_run:
            shutil.rmtree(work / run.name, ignore_errors=True)
        train_over = {**common, **run.overrides, "ckpt_dir": str(ckpt_dir), "output_dir": str(out_dir)}
        if _elects(run.name):
            train_over["val_max_cases"] = int(budget["val_max_cases"])
        train_cmd = bundle_command(
            "training", run.bundle, demo_configs(run.bundle, "training"), overrides_argv(train_over)
        )
        eval_over = {
            "dataset_dir": str(dataset),
            "datalist": str(datalist),
            "ckpt_dir": str(ckpt_dir),
            "output_dir": str(out_dir),
            "roi_size": list(budget["roi"]),
            "max_cases": args.max_eval_cases,
        }
        eval_cmd = bundle_command(
            "evaluate", run.bundle, demo_configs(run.bundle, "evaluate"), overrides_argv(eval_over)
        )
        t_train = _run(train_cmd, work / run.name / "train.log", args.dry_run)
        t_eval = _run(eval_cmd, work / run.name / "evaluate.log", args.dry_run)
        timings[run.name] = (t_train, t_eval)
        if not args.dry_run:
            summaries[run.name] = read_summary(out_dir / REPORT_FILES["summary_csv"])
    if args.dry_run:
        return 0

    wall = time.perf_counter() - t_start
    labels = {r.name: r.label for r in runs}
    first = summaries[runs[0].name]
    n_test = int(first["n_cases"].iloc[-1])
    per_run = "; ".join(f"{labels[n]} {t:.0f} s + {e:.0f} s" for n, (t, e) in timings.items())
    short = (
        " **Short CPU budget: a smoke comparison, not a measure of the methods on BraTS.**"
        if (preset_name == "cpu")
        else ""
    )
    caption = (
        f"Mean Dice (%) over the {n_test} held-out test case(s) for each set of available sequences; bold = best "
        f"run per row and region. {data_note}; split {_split_counts(datalist)} (5 folds, seed {args.seed}). "
        f"Every run: {budget['iterations']} iterations, batch {budget['batch_size']}, crop "
        f"{'x'.join(map(str, budget['roi']))} (also the evaluation window), network preset {budget['network_preset']}"
        f"{'' if budget['filters'] is None else ' with filters ' + str(budget['filters'])}, "
        f"{budget['optimizer']} lr {budget['learning_rate']:g} (weight decay {budget['weight_decay']:g}) with the "
        f"bundles' poly schedule (LCKD's bundle: the reference's two-phase poly), seed {args.seed}. "
        + "; ".join(_recipe(r) for r in runs)
        + f". Hardware: {hardware_description()}. Wall time {wall / 60:.1f} min "
        f"(train + evaluate: {per_run}). Legacy BraTS rules for empty regions; ET not post-processed. "
        f"Command: `{command}`.{short}"
    )
    title = " vs ".join(r.label for r in runs) + ": mean Dice (%) per available-sequence subset"
    if preset_name == "cpu":
        title += " (synthetic data, short CPU budget)"
    paths = write_comparison(summaries, labels, docs, caption, title=title)
    print(f"\nwrote {paths['md']} and {paths['png']} in {wall / 60:.1f} min")
    print(paths["md"].read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
