"""Dataset folder -> datalist file in one call: discovery, validation, stratified folds, atomic write.

The library form of ``python -m data_prep.brats`` (without its split-list options and printed report): the
bundles call it to make a datalist on first use instead of running the command-line tool with an argv list.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from lckd_med.data.datalist import check_split_args, make_datalist, split_counts, write_datalist
from lckd_med.data.layouts import discover_cases
from lckd_med.data.validation import validate_cases

__all__ = ["NoUsableCaseError", "build_datalist"]

logger = logging.getLogger(__name__)


class NoUsableCaseError(ValueError):
    """The dataset folder holds no case that passes validation (the message says why)."""


def build_datalist(
    dataset_dir: str | os.PathLike,
    output: str | os.PathLike,
    folds: int = 5,
    seed: int = 0,
    test_fold: int | None = 0,
    val_fold: int = 1,
    layout: str = "auto",
    release: int | str | None = None,
    require_label: bool = True,
    workers: int = 1,
) -> tuple[Path, dict[str, Any]]:
    """Discover and validate the cases under ``dataset_dir`` and write their datalist to ``output``.

    Args:
        dataset_dir: the dataset folder or a folder above it (:func:`~lckd_med.data.layouts.discover_cases`).
        output: datalist JSON path (written atomically).
        folds, seed, test_fold, val_fold: the stratified split (:func:`~lckd_med.data.datalist.check_split_args`).
        layout, release: as ``--layout`` / ``--release`` of ``python -m data_prep.brats``.
        require_label: reject cases without a label file.
        workers: validation processes.

    Returns:
        ``(path written, datalist dict)``.

    Raises:
        FileNotFoundError, NotADirectoryError: ``dataset_dir`` is missing or a file.
        lckd_med.data.layouts.LayoutError: nothing that looks like a BraTS case.
        NoUsableCaseError: cases were found but every one was rejected (the reasons are in the message).
    """
    check_split_args(folds, seed, test_fold, val_fold)
    found = discover_cases(dataset_dir, layout=layout, release=release)
    if not found.cases:
        raise NoUsableCaseError(f"no BraTS case found under {found.root} with layout {found.layout}")
    checks = validate_cases(found.cases, found.convention, require_label=require_label, workers=workers)
    usable = [c for c in checks if c.ok]
    if not usable:
        reasons = "; ".join(f"{c.case.case_id}: {r.reason}" for c in checks for r in c.reasons[:1])
        raise NoUsableCaseError(f"no usable case among the {len(checks)} found under {found.root} ({reasons})")
    d = make_datalist(
        checks,
        folds=folds,
        seed=seed,
        test_fold=test_fold,
        val_fold=val_fold,
        release=found.release,
        layout=found.layout,
        dataset_dir=found.root,
        convention=found.convention,
    )
    out = write_datalist(d, output)
    counts = ", ".join(f"{split} {c['total']}" for split, c in split_counts(d).items())
    logger.info("datalist %s: %d usable of %d case(s) under %s (%s)", out, len(usable), len(checks), found.root, counts)
    for c in checks:
        for issue in c.reasons:
            logger.warning("rejected %s: %s: %s", c.case.case_id, issue.file or "-", issue.reason)
    return out, d
