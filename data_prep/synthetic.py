"""Write a procedural BraTS-like dataset for demos and tests.

Usage::

    python -m data_prep.synthetic --out D --cases N [--seed S] [--spacing 1|2] [--release 2018|2023]
                                  [--lgg_fraction F] [--missing_fraction F] [--overwrite]

Cases follow the release's real layout and file naming (2018-2019: ``D/{HGG,LGG}/Brats18_SYN_001_1/...``;
2020-2022: flat legacy names; 2023+: flat ``BraTS-GLI-00000-000-{t2f,t1n,t1c,t2w,seg}.nii.gz``), int16 images,
uint8 labels in the release's convention, BraTS affine with qform = sform (codes 1). Every file is written to a
temporary name and renamed. Prints one summary line. Files already at the paths the cases take are never replaced
without ``--overwrite``. Exit status: 0 written, 1 not written (message on stderr), 2 bad argument, 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence

from lckd_med.data.synthetic import RELEASES_ACCEPTED, release_layout, validate_release, write_dataset
from lckd_med.utils.errors import run_guarded
from lckd_med.utils.parse import OneLineArgumentParser, parse_float

__all__ = ["build_parser", "main"]

_SPACINGS = (1.0, 2.0)


def _int_at_least(low: int, expected: str) -> Callable[[str], int]:
    """An argparse ``type``: an int >= ``low``; ``expected`` says what was wanted when the text is not an int."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1, "a whole number of cases")
_seed = _int_at_least(0, "a non-negative integer seed")


def _spacing(text: str) -> float:
    try:
        value = parse_float(text, "--spacing")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 1 or 2 (mm), got {text!r}") from None
    if value not in _SPACINGS:
        raise argparse.ArgumentTypeError(f"must be 1 or 2 (mm), got {text!r}")
    return value


def _release(text: str) -> int:
    try:
        return validate_release(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {RELEASES_ACCEPTED}, got {text!r}") from None


def _fraction(text: str) -> float:
    try:
        value = parse_float(text, "fraction")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``python -m data_prep.synthetic``."""
    parser = OneLineArgumentParser(
        prog="python -m data_prep.synthetic",
        description="Write procedural BraTS-like cases (four sequences + segmentation) in a real BraTS layout.",
    )
    parser.add_argument("--out", required=True, help="dataset root to write into (created if absent)")
    parser.add_argument("--cases", required=True, type=_positive_int, help="number of cases (>= 1)")
    parser.add_argument("--seed", type=_seed, default=0, help="random seed (default 0); same seed, same data")
    parser.add_argument("--spacing", type=_spacing, default=2.0, help="voxel size in mm: 1 or 2 (default 2)")
    parser.add_argument(
        "--release", type=_release, default=2018, help="BraTS year for layout/naming/labels (default 2018)"
    )
    parser.add_argument("--lgg_fraction", type=_fraction, default=0.3, help="fraction of LGG cases (default 0.3)")
    parser.add_argument(
        "--missing_fraction",
        type=_fraction,
        default=0.0,
        help="fraction of cases with one or two sequence files not written (default 0)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace files already at the cases' paths")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (argument errors exit with status 2)."""
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    records: list = []

    def write() -> int:
        records.extend(
            write_dataset(
                args.out,
                args.cases,
                seed=args.seed,
                spacing=args.spacing,
                release=args.release,
                lgg_fraction=args.lgg_fraction,
                missing_fraction=args.missing_fraction,
                overwrite=args.overwrite,
            )
        )
        return 0

    # an existing file (FileExistsError), a read-only or full file system, or Ctrl-C: one line
    status = run_guarded(
        write, interrupted="interrupted (Ctrl-C); the cases written so far are complete files", errors=(OSError,)
    )
    if status:
        return status
    n_lgg = sum(r["grade"] == "LGG" for r in records)
    n_no_et = sum(not r["enhancing"] for r in records)
    n_missing = sum(bool(r["missing"]) for r in records)
    print(
        f"data_prep.synthetic: wrote {len(records)} cases ({len(records) - n_lgg} HGG, {n_lgg} LGG, "
        f"{n_no_et} without ET, {n_missing} with missing sequences) release {args.release} "
        f"layout {release_layout(args.release)} spacing {args.spacing:g} mm seed {args.seed} to {args.out} "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
