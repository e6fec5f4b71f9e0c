"""Start-up time of ``lckd-med``: every command's ``--help`` beside ``python -c "import torch"``, side by side.

``python -m lckd_med.benchmarks.startup [--repeats 3] [--json]``

Each command runs in a fresh interpreter (``python -m lckd_med.cli <command> --help``, and one argument error:
``predict`` without any input), ``--repeats`` times, interleaved with ``python -c "import torch"`` so both see the
same machine load; the median wall-clock of each is printed with its ratio to importing torch, and whether torch or
MONAI were imported (they must not be: a command imports what it needs when it runs). The target is a ratio below
1 for every command; no unit test times this (the suite only checks that ``--help`` imports neither library).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

__all__ = ["COMMANDS", "PROBE", "time_command", "measure", "main"]

#: What is timed: a label and the ``lckd-med`` arguments.
COMMANDS: dict[str, list[str]] = {
    "lckd-med --help": ["--help"],
    "predict --help": ["predict", "--help"],
    "prepare --help": ["prepare", "--help"],
    "evaluate-folder --help": ["evaluate-folder", "--help"],
    "export-safetensors --help": ["export-safetensors", "--help"],
    "import-safetensors --help": ["import-safetensors", "--help"],
    "predict (argument error)": ["predict", "-o", "seg.nii.gz"],
}
#: Run after a command in the same interpreter: reports which heavy libraries it imported.
PROBE = (
    "import sys, json\n"
    "from lckd_med.cli import main\n"
    "try:\n"
    "    main(sys.argv[1:])\n"
    "except SystemExit:\n"
    "    pass\n"
    "print(json.dumps({m: m in sys.modules for m in ('torch', 'monai')}), file=sys.__stderr__)\n"
)


def time_command(argv: Sequence[str]) -> tuple[float, str]:
    """Seconds a fresh interpreter takes to run ``argv``, and its standard error."""
    env = {**os.environ, "LCKD_MED_PROGRESS": "0"}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, check=False)
    return time.perf_counter() - t0, done.stderr


def measure(repeats: int = 3) -> dict[str, dict[str, object]]:
    """Median seconds of each command and of ``import torch``, the ratio, and the heavy imports seen."""
    torch_times: list[float] = []
    runs: dict[str, list[float]] = {name: [] for name in COMMANDS}
    imported: dict[str, dict[str, bool]] = {}
    for _ in range(repeats):
        for name, args in COMMANDS.items():
            torch_times.append(time_command(["-c", "import torch"])[0])
            seconds, err = time_command(["-c", PROBE, *args])
            runs[name].append(seconds)
            imported[name] = json.loads(err.strip().splitlines()[-1])
    base = statistics.median(torch_times)
    out: dict[str, dict[str, object]] = {"import torch": {"seconds": round(base, 3), "ratio": 1.0}}
    for name, times in runs.items():
        median = statistics.median(times)
        out[name] = {"seconds": round(median, 3), "ratio": round(median / base, 3), "imports": imported[name]}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lckd_med.benchmarks.startup", description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each command (median reported)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    results = measure(args.repeats)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{'command':<28} {'seconds':>8} {'vs import torch':>16}  heavy imports")
    for name, r in results.items():
        heavy = ", ".join(k for k, v in dict(r.get("imports", {})).items() if v) or "none"  # type: ignore[arg-type]
        print(f"{name:<28} {r['seconds']:>8.2f} {r['ratio']:>16.2f}  {heavy if name != 'import torch' else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
