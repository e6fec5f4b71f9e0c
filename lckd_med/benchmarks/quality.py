"""Quality at equal CPU wall-clock: the lean default network vs lckd_med's previous default, LCKD recipe.

``python -m lckd_med.benchmarks.quality [--iterations 600] [--filters 8 16 32 64] [--run_iterations lean=N ...]
[--runs fullres lean lean_small] [--work_dir DIR] [--out FILE]``

Both runs go through the real LCKD bundle (``train.json`` + ``demo.json`` + overrides, as ``python -m
lckd_med.compare`` does) on the same synthetic data, split, seed, crop, channel widths and recipe (first half all
sequences, then random missing sequences, teachers elected at the switch, KD 0.1):

* ``fullres``: the previous default -- whole U-Net at full resolution, mean-fill at every level
  (``network_preset=fullres``, ``fill_levels=all``) -- for ``--iterations`` iterations;
* ``lean``: the lean architecture (``network_preset=lean``, ``fill_levels=bottleneck``) with the same channels;
* ``lean_small``: the lean default scaled to the CPU (``network_preset=lean_small``, its own channels);

the lean runs get as many iterations as fit in the same training time: ``--run_iterations`` or, by default, from
the ratio of the networks' step times measured here first (network only, so bundle overheads are not included).

Both are evaluated on the 15 subsets of the held-out test split; the per-subset mean Dice table (ET, TC, WT) and
the measured wall times are written to ``--out`` and printed. Synthetic data and a short CPU budget: this checks
that the lean network does not lose quality for its compute, not how either does on BraTS.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from lckd_med.benchmarks.train_step import benchmark_step
from lckd_med.compare import PRESETS as BUDGETS
from lckd_med.compare import comparison_table, default_runs, hardware_description, overrides_argv
from lckd_med.demo import bundle_command
from lckd_med.engines.workflow import bundle_dir, ensure_synthetic, prepare_datalist
from lckd_med.networks import build_preset
from lckd_med.reports import REPORT_FILES, read_summary
from lckd_med.utils.io import write_text_atomic

__all__ = ["NETWORKS", "FULLRES_FILTERS", "step_time_ratio", "main"]

#: Channels of the CPU-scaled previous default (``python -m lckd_med.compare``'s CPU budget before the presets).
FULLRES_FILTERS = [8, 16, 32, 64]

#: Run name -> (label, network overrides of the bundle). ``"filters": None`` keeps the preset's own channels;
#: otherwise ``--filters`` applies (the preset's stem kept).
NETWORKS = {
    "fullres": ("previous default (fullres, fill all)", {"network_preset": "fullres", "fill_levels": "all"}),
    "lean": ("lean, same channels", {"network_preset": "lean", "fill_levels": "bottleneck"}),
    "lean_small": (
        "lean_small preset",
        {"network_preset": "lean_small", "fill_levels": "bottleneck", "filters": None},
    ),
}


def step_time_ratio(name: str, filters: Sequence[int], roi: Sequence[int], batch: int, steps: int = 6) -> float:
    """Training step time of the ``fullres`` network over run ``name``'s (same crop and batch; CPU, network only)."""
    times = {}
    for run in ("fullres", name):
        over = NETWORKS[run][1]
        torch.manual_seed(0)
        widths = list(filters) if over.get("filters", True) is not None else None
        net = build_preset(over["network_preset"], "lckd", filters=widths, fill_levels=over["fill_levels"])
        times[run] = benchmark_step(net, "lckd", roi, batch, torch.device("cpu"), False, steps)["step_s"]
    return times["fullres"] / times[name]


def _run(cmd: list[str], log: Path) -> float:
    print("\n$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"command failed with exit code {proc.returncode} (log {log})")
    return time.perf_counter() - t0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lckd_med.benchmarks.quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=600, help="training iterations of the fullres run")
    p.add_argument(
        "--filters", type=int, nargs="+", default=None, help=f"channels of fullres and lean (default {FULLRES_FILTERS})"
    )
    p.add_argument("--work_dir", default=None, help="default bundles/lckd/runs/quality")
    p.add_argument("--out", default=None, help="Markdown table (default <work_dir>/quality.md)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--run_iterations",
        nargs="+",
        default=[],
        metavar="RUN=N",
        help="iterations of other runs (default: fullres's scaled by the measured step-time ratio, network only)",
    )
    p.add_argument(
        "--runs",
        nargs="+",
        choices=list(NETWORKS),
        default=list(NETWORKS),
        help="runs to (re)train; the others are read back from <work_dir>/<run>/timing.json and their reports",
    )
    args = p.parse_args(argv)
    budget = dict(BUDGETS["cpu"])
    filters = list(args.filters or FULLRES_FILTERS)
    roi, batch = list(budget["roi"]), int(budget["batch_size"])
    work = Path(args.work_dir) if args.work_dir else Path(bundle_dir("lckd")) / "runs" / "quality"
    dataset = Path(ensure_synthetic(work / "data", cases=budget["cases"], spacing=budget["spacing"], seed=args.seed))
    datalist = work / "datalist.json"
    if not datalist.is_file():
        prepare_datalist(dataset, datalist, seed=args.seed)
    given = {k: int(v) for k, v in (item.split("=", 1) for item in args.run_iterations)}
    ratios = {n: step_time_ratio(n, filters, roi, batch) for n in NETWORKS if n != "fullres" and n in args.runs}
    iters = {"fullres": args.iterations}
    iters |= {n: given.get(n, max(2, round(args.iterations * r))) for n, r in ratios.items()}
    print(f"step time fullres / run: {ratios}; iterations {iters}", flush=True)
    summaries, walls = {}, {}
    for name, (_, net_over) in NETWORKS.items():
        if name not in args.runs:
            timing = json.loads((work / name / "timing.json").read_text())
            iters[name], walls[name] = timing["iterations"], (timing["train_s"], timing["eval_s"])
            summaries[name] = read_summary(work / name / "output" / REPORT_FILES["summary_csv"])
            continue
        n = iters[name]
        shutil.rmtree(work / name, ignore_errors=True)
        recipe = default_runs(n)[0].overrides  # the compare's LCKD recipe for n iterations
        common = {
            "dataset_dir": str(dataset),
            "datalist": str(datalist),
            "seed": args.seed,
            "roi_size": roi,
            "filters": filters if net_over.get("filters", True) is not None else None,
            "batch_size": batch,
            "optimizer_name": budget["optimizer"],
            "learning_rate": budget["learning_rate"],
            "weight_decay": budget["weight_decay"],
            "num_workers": 0,
            "save_every_epochs": 1000,
            "val_max_cases": budget["val_max_cases"],
            "ckpt_dir": str(work / name / "models"),
            "output_dir": str(work / name / "output"),
        }
        train = {
            **common,
            **{k: v for k, v in net_over.items() if k != "filters"},
            **recipe,
            "num_iterations": n,
            "epoch_length": max(1, min(50, n // 2)),
        }
        train["log_every"] = max(1, n // 10)
        cmd = bundle_command("training", "lckd", ["train.json", "demo.json"], overrides_argv(train))
        t_train = _run(cmd, work / name / "train.log")
        ev = {k: common[k] for k in ("dataset_dir", "datalist", "ckpt_dir", "output_dir", "roi_size")}
        cmd = bundle_command("evaluate", "lckd", ["evaluate.json", "demo.json"], overrides_argv(ev))
        t_eval = _run(cmd, work / name / "evaluate.log")
        walls[name] = (t_train, t_eval)
        timing = {"iterations": n, "train_s": round(t_train, 1), "eval_s": round(t_eval, 1)}
        write_text_atomic(work / name / "timing.json", json.dumps(timing) + "\n")
        summaries[name] = read_summary(work / name / "output" / REPORT_FILES["summary_csv"])
    labels = {k: v[0] for k, v in NETWORKS.items()}
    command = "python -m lckd_med.benchmarks.quality" + "".join(" " + shlex.quote(a) for a in (argv or sys.argv[1:]))
    caption = (
        f"**Synthetic data**: {budget['cases']} synthetic BraTS2018-layout cases at {budget['spacing']:g} mm, "
        f"seed {args.seed}; same split, crop {'x'.join(map(str, roi))}, batch {batch}, filters {filters}, "
        f"{budget['optimizer']} lr {budget['learning_rate']:g}, LCKD recipe (half all sequences, then random missing "
        f"sequences, election at the switch, KD 0.1). Iterations: "
        + ", ".join(f"{n} {i}" for n, i in iters.items())
        + ". Wall time train + evaluate: "
        + "; ".join(f"{n} {t:.0f} s + {e:.0f} s" for n, (t, e) in walls.items())
        + f". Hardware: {hardware_description()} (shared with other jobs). Command: `{command}`."
    )
    table = comparison_table(summaries, labels, caption=caption)
    out = Path(args.out) if args.out else work / "quality.md"
    write_text_atomic(out, table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
