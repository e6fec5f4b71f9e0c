"""Scan a BraTS dataset folder, validate every case and write the datalist JSON with cross-validation splits.

Usage::

    python -m data_prep.brats --dataset_dir /data/MICCAI_BraTS_2018_Data_Training --output datalist.json \\
        [--folds 5] [--seed 0] [--test_fold 0|none] [--val_fold 1] [--layout auto|brats2018|flat|brats2023] \\
        [--release YEAR] [--workers N] [--allow_unlabelled] [--overwrite] \\
        [--protocol lckd2018|lckd2018_disjoint | --split_lists training=FILE [validation=FILE] [testing=FILE]]

With ``--protocol`` or ``--split_lists`` the splits follow case-id lists instead of folds (see
:mod:`lckd_med.data.splits`); listed cases missing on disk and cases on disk in no list are reported by name.

The layout (and from it the label convention: ET = 4 up to 2022, 3 from 2023) is detected unless given.
Every case is checked (readable NIfTI, 3-D, same shape and affine, finite non-empty images, valid labels); a
broken case is listed under ``rejected`` with its file and reason and never stops the run. A missing sequence
leaves the case usable with that sequence ``null``. Exit status: 0 when at least one case is usable, 1 when
none is (or the folder holds no BraTS case, or the datalist cannot be written), 2 for a bad argument, 130 on Ctrl-C.

An existing ``--output`` is replaced only when it is a datalist lckd_med wrote and nobody edited since, or with
``--overwrite``; never when it is one of the dataset's own files.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from lckd_med.data.datalist import check_split_args, make_datalist, split_counts, write_datalist
from lckd_med.data.layouts import (
    LAYOUT_PATTERNS,
    LAYOUTS,
    DatasetConflictError,
    LayoutError,
    discover_cases,
    parse_release,
)
from lckd_med.data.splits import (
    PROTOCOLS,
    check_split_lists,
    datalist_from_lists,
    parse_split_list_args,
    protocol_lists,
    report_lines,
)
from lckd_med.data.validation import validate_cases
from lckd_med.utils.errors import run_guarded
from lckd_med.utils.outputs import same_file
from lckd_med.utils.parse import OneLineArgumentParser, arg_type, parse_int
from lckd_med.utils.progress import progress_bar

__all__ = ["build_parser", "main", "default_workers"]

EXIT_OK = 0
EXIT_NO_DATA = 1
EXIT_BAD_ARGS = 2


def default_workers() -> int:
    """Default validation processes: ``min(4, cpu count)``."""
    return max(1, min(4, os.cpu_count() or 1))


def _fold_or_none(text: str) -> int | None:
    if text.strip().lower() in ("none", "null"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fold number or 'none', got {text!r}") from None


def _release(text: str) -> int:
    try:
        return parse_release(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``python -m data_prep.brats``."""
    p = OneLineArgumentParser(
        prog="python -m data_prep.brats",
        description="Validate a BraTS dataset folder and write a datalist JSON with cross-validation splits.",
        epilog="Layouts: " + "; ".join(f"{k}: {v}" for k, v in LAYOUT_PATTERNS.items()),
    )
    p.add_argument("--dataset_dir", required=True, help="BraTS dataset folder, or any folder above it")
    p.add_argument("--output", required=True, help="datalist JSON file to write")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing --output that lckd_med did not write as it is"
    )
    p.add_argument(
        "--folds", type=arg_type(parse_int, "--folds"), default=5, help="number of cross-validation folds (default 5)"
    )
    p.add_argument("--seed", type=arg_type(parse_int, "--seed"), default=0, help="seed of the fold shuffle (default 0)")
    p.add_argument(
        "--test_fold", type=_fold_or_none, default=0, help="fold held out for testing, or 'none' (default 0)"
    )
    p.add_argument(
        "--val_fold", type=arg_type(parse_int, "--val_fold"), default=1, help="fold used for validation (default 1)"
    )
    lists = p.add_mutually_exclusive_group()
    lists.add_argument(
        "--protocol",
        choices=sorted(PROTOCOLS),
        default=None,
        help="splits from a published case-id list instead of folds: "
        + "; ".join(f"{k}: {v.description}" for k, v in PROTOCOLS.items()),
    )
    lists.add_argument(
        "--split_lists",
        nargs="+",
        metavar="SPLIT=FILE",
        default=None,
        help="splits from your own lists, e.g. training=train.txt validation=val.txt testing=test.csv "
        "(one case id per line, or a CSV with a case_id/id or path column)",
    )
    p.add_argument("--layout", choices=("auto", *LAYOUTS), default="auto", help="folder layout (default auto)")
    p.add_argument(
        "--release", type=_release, default=None, help="BraTS year forcing the label convention (2023+: ET=3)"
    )
    p.add_argument(
        "--workers",
        type=arg_type(parse_int, "--workers", minimum=1),
        default=default_workers(),
        help="validation processes (default min(4, cpus))",
    )
    p.add_argument("--allow_unlabelled", action="store_true", help="keep cases without a segmentation (label null)")
    return p


def _err(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)


def _no_case_message(detail: str) -> str:
    layouts = "\n".join(f"  {k:<10} {v}" for k, v in LAYOUT_PATTERNS.items())
    return (
        f"{detail}\nExpected layouts:\n{layouts}\n"
        "No BraTS data at hand? Make a small synthetic dataset with "
        "`python -m data_prep.synthetic --out DIR --cases 12` (see its --help) and point --dataset_dir at DIR."
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the tool; returns the exit status (0 ok, 1 no usable case or nothing written, 2 bad argument, 130 Ctrl-C)."""
    for stream in (sys.stdout, sys.stderr):  # non-UTF-8 file names print as \xNN instead of crashing the run
        getattr(stream, "reconfigure", lambda **_: None)(errors="backslashreplace")
    # a file-system error (read-only or full disk, a folder that vanished) or Ctrl-C: one line
    return run_guarded(
        lambda: _main(argv),
        interrupted="interrupted (Ctrl-C); no datalist was written",
        errors=(OSError,),
        failed=EXIT_NO_DATA,
    )


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and on errors; report as a status instead
        return int(exc.code or 0)
    try:
        check_split_args(args.folds, args.seed, args.test_fold, args.val_fold)
    except (TypeError, ValueError) as err:
        _err(str(err))
        return EXIT_BAD_ARGS
    lists = None
    try:
        if args.protocol or args.split_lists:
            lists = protocol_lists(args.protocol) if args.protocol else parse_split_list_args(args.split_lists)
            check_split_lists(lists)
    except (ValueError, FileNotFoundError) as err:
        _err(str(err))
        return EXIT_BAD_ARGS
    if os.path.isdir(args.output):
        _err(f"--output is a folder, expected a JSON file path: {args.output}")
        return EXIT_BAD_ARGS

    try:
        found = discover_cases(args.dataset_dir, layout=args.layout, release=args.release)
    except (FileNotFoundError, NotADirectoryError) as err:
        _err(f"{err}. Give the folder holding the BraTS cases with --dataset_dir.")
        return EXIT_NO_DATA
    except LayoutError as err:
        _err(_no_case_message(str(err)))
        return EXIT_NO_DATA
    except DatasetConflictError as err:
        _err(str(err))
        return EXIT_NO_DATA

    print(f"dataset:    {found.root}")
    print(f"layout:     {found.layout}{' (detected)' if args.layout == 'auto' else ''}")
    print(f"release:    {found.release} (label convention {found.convention.name}, ET = {found.convention.et})")
    for subtree in found.subtrees:
        print(f"  found {subtree}")
    for issue in found.problems:
        print(f"  note: {issue}")
    if not found.cases:
        _err(_no_case_message(f"no BraTS case found under {found.root} with layout {found.layout}."))
        return EXIT_NO_DATA

    inputs = [p for c in found.cases for p in (*c.paths.values(), c.label) if p is not None]
    clash = next((p for p in inputs if same_file(args.output, p)), None)
    if clash is not None:
        _err(f"--output {args.output} is a file of the dataset ({clash}); choose another output path")
        return EXIT_BAD_ARGS
    with progress_bar(desc="validate", total=len(found.cases)) as bar:
        checks = validate_cases(
            found.cases,
            found.convention,
            require_label=not args.allow_unlabelled,
            workers=args.workers,
            progress=lambda _check: bar.update(),
        )
    usable = [c for c in checks if c.ok]
    partial = [c for c in usable if c.missing_modalities]
    rejected = [c for c in checks if not c.ok]
    print(f"cases found: {len(checks)}")
    print(f"usable:      {len(usable)}")
    print(f"usable with missing sequences: {len(partial)}")
    for c in partial:
        print(f"  {c.case.case_id}: missing {', '.join(c.missing_modalities)}")
    print(f"rejected:    {len(rejected)}")
    for c in rejected:
        for issue in c.reasons:
            print(f"  {c.case.case_id}: {issue.file or '-'}: {issue.reason}")
    for c in checks:
        for issue in c.warnings:
            print(f"  warning {c.case.case_id}: {issue}")
    if not usable:
        _err(f"no usable case among the {len(checks)} found under {found.root}; no datalist written.")
        return EXIT_NO_DATA

    if lists is not None:
        return _write_from_lists(args, found, checks, lists)
    d = make_datalist(
        checks,
        folds=args.folds,
        seed=args.seed,
        test_fold=args.test_fold,
        val_fold=args.val_fold,
        release=found.release,
        layout=found.layout,
        dataset_dir=found.root,
        convention=found.convention,
    )
    try:
        out = write_datalist(d, args.output, overwrite=args.overwrite)
    except FileExistsError as err:
        _err(str(err))
        return EXIT_BAD_ARGS
    print(f"splits (folds={args.folds}, seed={args.seed}, test_fold={args.test_fold}, val_fold={args.val_fold}):")
    for split, counts in split_counts(d).items():
        by_grade = ", ".join(f"{g} {n}" for g, n in counts.items() if g != "total")
        print(f"  {split:<10} {counts['total']:>5}  ({by_grade})")
        if counts["total"] == 0 and not (split == "testing" and args.test_fold is None):
            print(f"  warning: {split} split is empty: too few usable cases for {args.folds} folds")
    print(f"datalist written: {out}")
    return EXIT_OK


def _write_from_lists(args: argparse.Namespace, found, checks, lists) -> int:
    source = args.protocol or "split_lists"
    d, report = datalist_from_lists(
        checks,
        lists,
        release=found.release,
        layout=found.layout,
        dataset_dir=found.root,
        convention=found.convention,
        source=source,
    )
    print(f"splits from {source} (case-id lists; --folds/--seed/--test_fold/--val_fold not used):")
    for line in report_lines(report, lists):
        print(line)
    if d["meta"]["validation_in_training"]:
        print("  note: the validation cases are also training cases (as the list says)")
    if not d["training"]:
        _err(f"no case of the training list is usable under {found.root}; no datalist written.")
        return EXIT_NO_DATA
    try:
        out = write_datalist(d, args.output, overwrite=args.overwrite)
    except FileExistsError as err:
        _err(str(err))
        return EXIT_BAD_ARGS
    print(f"datalist written: {out}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
