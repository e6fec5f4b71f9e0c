"""CPU-sized end-to-end demo: synthetic BraTS data -> training -> 15-subset evaluation -> the per-subset table.

``python -m lckd_med.demo`` runs the real bundle commands through ``python -m monai.bundle`` with the demo
overlay, exactly as a user would type them, and prints each command before running it. The numbers it prints
come from synthetic data and a short CPU budget: they show the pipeline works, not how well LCKD segments BraTS.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from lckd_med.engines.workflow import bundle_dir

__all__ = ["main", "bundle_command", "DEMO_CONFIGS"]

#: Configs merged, in order (later files override), per ``(bundle, run id)`` of the CPU demo. OMD's configs are
#: overlays of LCKD's (its evaluate.json only names its folder); both demos add ``bundles/lckd/demo.json`` (OMD's
#: training adds two keys more).
DEMO_CONFIGS: dict[tuple[str, str], tuple[str, ...]] = {
    ("lckd", "training"): ("lckd/train.json", "lckd/demo.json"),
    ("lckd", "evaluate"): ("lckd/evaluate.json", "lckd/demo.json"),
    ("omd", "training"): ("lckd/train.json", "omd/train.json", "lckd/demo.json", "omd/demo.json"),
    ("omd", "evaluate"): ("lckd/evaluate.json", "omd/evaluate.json", "lckd/demo.json"),
}


def bundle_command(run_id: str, bundle: str, configs: Sequence[str], overrides: Sequence[str] = ()) -> list[str]:
    """``python -m monai.bundle run <run_id> --config_file "['a.json','b.json']" --meta_file M [overrides]`` as argv.

    Args:
        run_id: the config id to run (``training``, ``evaluate``).
        bundle: the bundle whose ``metadata.json`` describes the run (MONAI would look next to the first config).
        configs: ``"<bundle>/<file>"`` paths (a bare file name means ``bundle``'s), merged in order.
        overrides: ``--key value`` arguments.
    """
    paths = [Path(bundle_dir(c.split("/")[0] if "/" in c else bundle)) / c.split("/")[-1] for c in configs]
    files = ",".join(f"'{p}'" for p in paths)
    meta = str(Path(bundle_dir(bundle)) / "metadata.json")
    return [
        sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", f"[{files}]", "--meta_file", meta,
        *overrides,
    ]  # fmt: skip


def _run(cmd: list[str]) -> None:
    print("\n$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    print(f"(finished in {time.perf_counter() - t0:.0f} s)", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lckd_med.demo", description=__doc__)
    parser.add_argument("--bundle", default="lckd", choices=["lckd", "omd"], help="which method's bundle to run")
    parser.add_argument("--fresh", action="store_true", help="delete the previous demo data, model and reports")
    args = parser.parse_args(argv)

    root = Path(bundle_dir(args.bundle))
    if args.fresh:
        for name in ("demo_data", "demo_output", "demo_models"):
            shutil.rmtree(root / "runs" / name, ignore_errors=True)
    try:
        _run(bundle_command("training", args.bundle, DEMO_CONFIGS[args.bundle, "training"]))
        _run(bundle_command("evaluate", args.bundle, DEMO_CONFIGS[args.bundle, "evaluate"]))
    except subprocess.CalledProcessError as e:
        print(f"\ndemo step failed with exit code {e.returncode}: {' '.join(e.cmd)}", file=sys.stderr)
        return e.returncode or 1
    out = root / "runs" / "demo_output"
    print(
        f"\nReports: {out}/subset_summary.md, subset_metrics.csv, subset_dice_heatmap.png; "
        f"teacher election record: {out}/teacher_election.csv.\n"
        "These numbers come from synthetic data and a CPU-sized budget (see bundles/lckd/demo.json)."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
