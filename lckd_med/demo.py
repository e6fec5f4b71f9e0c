"""CPU-sized end-to-end demo: synthetic BraTS data -> training -> 15-subset evaluation -> the per-subset table.

``python -m lckd_med.demo [--bundle lckd|omd|...]`` runs the real bundle commands through ``python -m monai.bundle``
with the demo overlay, exactly as a user would type them, and prints each command before running it. ``--bundle``
is any registered method with a bundle folder (``bundles/<method>/``). The numbers it prints come from synthetic
data and a short CPU budget: they show the pipeline works, not how well a method segments BraTS.
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

from lckd_med.engines.workflow import bundle_dir, bundles_root
from lckd_med.methods import METHODS

__all__ = ["main", "bundle_command", "demo_configs", "method_bundles", "BASE_BUNDLE"]

#: The bundle every other method's bundle overlays (its configs are merged first).
BASE_BUNDLE = "lckd"
#: The config file of each run id of the CPU demo.
_RUN_FILES = {"training": "train.json", "evaluate": "evaluate.json"}


def method_bundles() -> list[str]:
    """The registered methods (:data:`lckd_med.methods.METHODS`, in its order) that have a bundle folder."""
    root = bundles_root()
    return [name for name in METHODS if (root / name / "train.json").is_file()]


def demo_configs(bundle: str, run_id: str) -> tuple[str, ...]:
    """Configs merged, in order (later files override), for ``run_id`` (``training``/``evaluate``) of the CPU demo.

    A method's configs are overlays of LCKD's: ``lckd/<file>``, then ``<bundle>/<file>``, then the demo overlay
    ``lckd/demo.json`` and, for training, the method's own ``<bundle>/demo.json`` when it has one.

    Raises:
        ValueError: unknown run id.
    """
    if run_id not in _RUN_FILES:
        raise ValueError(f"run_id must be one of {list(_RUN_FILES)}, got {run_id!r}")
    name = _RUN_FILES[run_id]
    configs = [f"{BASE_BUNDLE}/{name}"]
    if bundle != BASE_BUNDLE:
        configs.append(f"{bundle}/{name}")
    configs.append(f"{BASE_BUNDLE}/demo.json")
    if bundle != BASE_BUNDLE and run_id == "training" and (Path(bundle_dir(bundle)) / "demo.json").is_file():
        configs.append(f"{bundle}/demo.json")
    return tuple(configs)


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
    parser.add_argument("--bundle", default=BASE_BUNDLE, choices=method_bundles(), help="which method's bundle to run")
    parser.add_argument("--fresh", action="store_true", help="delete the previous demo data, model and reports")
    args = parser.parse_args(argv)

    root = Path(bundle_dir(args.bundle))
    if args.fresh:
        for name in ("demo_data", "demo_output", "demo_models"):
            shutil.rmtree(root / "runs" / name, ignore_errors=True)
    try:
        _run(bundle_command("training", args.bundle, demo_configs(args.bundle, "training")))
        _run(bundle_command("evaluate", args.bundle, demo_configs(args.bundle, "evaluate")))
    except subprocess.CalledProcessError as e:
        print(f"\ndemo step failed with exit code {e.returncode}: {' '.join(e.cmd)}", file=sys.stderr)
        return e.returncode or 1
    out = root / "runs" / "demo_output"
    election = out / "teacher_election.csv"
    print(
        f"\nReports: {out}/subset_summary.md, subset_metrics.csv, subset_dice_heatmap.png"
        + (f"; teacher election record: {election}" if election.is_file() else "")
        + ".\nThese numbers come from synthetic data and a CPU-sized budget (see bundles/lckd/demo.json)."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
