"""Glue the bundle configs call: locating the bundle, preparing the datalist, optimizers, logging set-up.

Kept in Python so the JSON configs stay declarative and every ``$`` expression stays a one-liner.
"""

from __future__ import annotations

import functools
import importlib.resources
import logging
import math
import numbers
import os
import sys
import traceback
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

__all__ = [
    "bundles_root",
    "bundle_dir",
    "prepare_datalist",
    "bundle_datalist",
    "load_split",
    "datalist_meta",
    "recipe_of",
    "ensure_synthetic",
    "make_optimizer",
    "OPTIMIZERS",
    "epochs_for",
    "setup_logging",
    "install_error_hook",
    "user_error_of",
    "DatasetNotFoundError",
    "DatalistMismatchError",
    "check_datalist_matches",
]

logger = logging.getLogger(__name__)


class DatasetNotFoundError(FileNotFoundError):
    """No usable BraTS data where the config points; the message names both ways out."""


def bundles_root() -> Path:
    """Folder holding the bundles (``lckd`` and one folder per method with a bundle of its own: ``omd``, ``hemis``).

    An installed wheel ships them as package data, ``lckd_med/bundles`` (``pyproject.toml`` maps the repository's
    top-level ``bundles/`` there); a source checkout, editable install or not, has them beside the package, in the
    repository's ``bundles/``. Both are looked up from where ``lckd_med`` was imported, never from the working
    directory.

    Raises:
        FileNotFoundError: neither folder exists (an install made without the bundle files).
    """
    package = Path(str(importlib.resources.files("lckd_med")))
    for root in (package / "bundles", package.parent / "bundles"):  # wheel, then source checkout
        if root.is_dir():
            return root
    raise FileNotFoundError(
        f"no bundles folder in {package / 'bundles'} (installed package) nor in {package.parent / 'bundles'} "
        "(source checkout); reinstall lckd_med with `pip install .` or `pip install -e .` from the repository"
    )


def bundle_dir(name: str) -> str:
    """Folder of the bundle ``name`` (``"lckd"``, ``"omd"``) under :func:`bundles_root`: what the configs use as
    ``bundle_root``, so they find their default ``runs/`` folders from any working directory.

    Raises:
        FileNotFoundError: no such bundle (the message lists the bundles there).
    """
    root = bundles_root()
    path = root / name
    if not (path / "metadata.json").is_file():
        have = sorted(p.name for p in root.iterdir() if (p / "metadata.json").is_file())
        raise FileNotFoundError(f"no bundle {name!r} in {root}; the bundles there are {have}")
    return str(path)


def _no_data_message(dataset_dir: str | os.PathLike, why: str) -> str:
    return (
        f"{why}: {dataset_dir}\n"
        "Two ways out:\n"
        "  1. real data: point dataset_dir at a BraTS folder as distributed, e.g.\n"
        "       python -m monai.bundle run training --config_file bundles/lckd/train.json "
        "--dataset_dir /data/MICCAI_BraTS_2018_Data_Training\n"
        "  2. synthetic data: make a BraTS-layout folder first, e.g.\n"
        f"       python -m data_prep.synthetic --out {dataset_dir} --cases 24 --spacing 2\n"
        "(a datalist made beforehand with `python -m data_prep.brats --dataset_dir D --output F` can be "
        "passed as --datalist F)"
    )


def prepare_datalist(
    dataset_dir: str | os.PathLike,
    datalist: str | os.PathLike,
    folds: int = 5,
    seed: int = 0,
    test_fold: int = 0,
    val_fold: int = 1,
) -> str:
    """Path of a usable datalist: ``datalist`` when it exists, else one made from ``dataset_dir`` there.

    Making it calls :func:`lckd_med.data.prepare.build_datalist`, the code behind ``python -m data_prep.brats``
    (discovery, validation, stratified folds), and logs its summary. An existing datalist is used only when it
    describes what was asked (see :func:`check_datalist_matches`): one found in ``output_dir`` that was made from
    another dataset, or with other folds, is refused rather than silently evaluated.

    Raises:
        DatasetNotFoundError: no datalist and ``dataset_dir`` missing, empty or without a usable case.
        DatalistMismatchError: the existing datalist was made from another ``dataset_dir`` or other folds/seed.
    """
    datalist = Path(datalist)
    if datalist.is_file():
        check_datalist_matches(datalist, dataset_dir, folds, seed)
        return str(datalist)
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise DatasetNotFoundError(_no_data_message(dataset_dir, "dataset_dir does not exist"))
    if not any(dataset_dir.iterdir()):
        raise DatasetNotFoundError(_no_data_message(dataset_dir, "dataset_dir is empty"))
    from lckd_med.data.layouts import LayoutError
    from lckd_med.data.prepare import NoUsableCaseError, build_datalist

    try:
        build_datalist(dataset_dir, datalist, folds=folds, seed=seed, test_fold=test_fold, val_fold=val_fold)
    except (LayoutError, NoUsableCaseError) as e:
        raise DatasetNotFoundError(
            _no_data_message(dataset_dir, f"no usable BraTS case found in dataset_dir ({e})")
        ) from e
    return str(datalist)


class DatalistMismatchError(ValueError):
    """An existing datalist describes another dataset or other folds than the command asks for."""


def check_datalist_matches(datalist: str | os.PathLike, dataset_dir: str | os.PathLike, folds: int, seed: int) -> None:
    """Refuse an existing datalist that was made from another dataset or with other folds than asked.

    ``dataset_dir`` is compared only when it is an existing folder (a config that names a datalist alone keeps
    its default, absent ``dataset_dir``); ``folds`` and ``seed`` only for a fold-based datalist (not one made from
    case-id lists).

    Raises:
        DatalistMismatchError: naming the datalist, what it was made from and the ways out.
    """
    meta = datalist_meta(datalist)
    made_from = meta.get("dataset_dir")
    asked = Path(dataset_dir)
    diffs = []
    if made_from and asked.is_dir() and Path(made_from).resolve() != asked.resolve():
        diffs.append(f"dataset_dir {made_from}, not {asked}")
    if "split_lists" not in meta:
        if "folds" in meta and meta["folds"] != folds:
            diffs.append(f"folds {meta['folds']}, not {folds}")
        if "seed" in meta and meta["seed"] != seed:
            diffs.append(f"seed {meta['seed']}, not {seed}")
    if diffs:
        raise DatalistMismatchError(
            f"datalist {datalist} was made with {'; '.join(diffs)} as asked: pass --datalist with a new path to make "
            "one for what you asked, move this one away, or pass the settings it was made with to use it as it is"
        )


# only __wrapped__ is set: inspect.signature and help() show prepare_datalist's arguments
@functools.wraps(prepare_datalist, assigned=(), updated=())
def bundle_datalist(*args: Any, **kwargs: Any) -> str:
    """:func:`prepare_datalist` (same arguments) for bundle configs: a missing dataset ends the run with just the
    message (``SystemExit``) instead of a long traceback through the config parser."""
    try:
        return prepare_datalist(*args, **kwargs)
    except DatasetNotFoundError as e:
        raise SystemExit(f"error: {e}") from None


def load_split(datalist: str | os.PathLike, split: str, max_cases: int | None = None) -> list[dict[str, Any]]:
    """Entries of one split (``training``/``validation``/``testing``) of a datalist, optionally the first
    ``max_cases``.

    Raises:
        ValueError: the split is empty (the message says which split and file).
    """
    from lckd_med.data.datalist import load_datalist

    entries = load_datalist(datalist, split)
    if max_cases is not None:
        if max_cases < 1:
            raise ValueError(f"max_cases must be >= 1, got {max_cases}")
        entries = entries[:max_cases]
    if not entries:
        raise ValueError(f"the {split!r} split of {datalist} has no case; regenerate it with more cases or folds")
    return entries


def datalist_meta(datalist: str | os.PathLike) -> dict[str, Any]:
    """The ``meta`` block of a datalist (release, label convention, folds, seed, ...)."""
    import json

    with open(datalist) as f:
        data = json.load(f)
    if not isinstance(data, dict) or "meta" not in data:
        raise ValueError(f"{datalist} has no 'meta' block; regenerate it with python -m data_prep.brats")
    return dict(data["meta"])


def recipe_of(
    roi_size: Iterable[int],
    batch_size: int,
    num_iterations: int,
    phase1_iterations: int,
    optimizer: str,
    learning_rate: float,
    seed: int,
    **method_settings: Any,
) -> dict[str, Any]:
    """The training recipe as a JSON-able dict, stored in the checkpoint for the record.

    Args:
        roi_size, batch_size, num_iterations, phase1_iterations, optimizer, learning_rate, seed: what every method
            shares (the bundle's keys of those names).
        method_settings: the method's own (the bundle's ``method_recipe``, e.g. LCKD's ``method``, ``kd_weight``,
            ``election_interval``; OMD's ``method``, ``mmd_weight``, ``kl_weight``, ...): numbers, strings,
            booleans, ``None`` or lists of them.

    Raises:
        TypeError: a method setting that is not a JSON value.
    """
    return {
        "roi_size": [int(v) for v in roi_size],
        "batch_size": int(batch_size),
        "num_iterations": int(num_iterations),
        "phase1_iterations": int(phase1_iterations),
        "optimizer": str(optimizer),
        "learning_rate": float(learning_rate),
        "seed": int(seed),
        **{name: _json_value(name, value) for name, value in method_settings.items()},
    }


def _json_value(name: str, value: Any) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_json_value(name, v) for v in value]
    raise TypeError(f"recipe setting {name}={value!r} is not a JSON value (number, string, boolean, null or a list)")


def ensure_synthetic(
    dataset_dir: str | os.PathLike, cases: int = 24, spacing: float = 2.0, seed: int = 0, release: int = 2018
) -> str:
    """``dataset_dir``, after writing a synthetic BraTS-layout dataset there if it does not exist yet.

    Used by the demo overlays only; real data is never touched (an existing folder is returned as is).
    """
    path = Path(dataset_dir)
    if path.is_dir() and any(path.iterdir()):
        return str(path)
    from lckd_med.data.synthetic import write_dataset

    logger.info("writing %d synthetic BraTS%d cases at %g mm to %s", cases, release, spacing, path)
    write_dataset(path, cases, seed=seed, spacing=spacing, release=release)
    return str(path)


#: Optimizer names :func:`make_optimizer` builds.
OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw", "adam")


def make_optimizer(
    name: str,
    params: Iterable[torch.nn.Parameter],
    lr: float,
    momentum: float = 0.99,
    weight_decay: float = 3e-5,
    nesterov: bool = True,
    amsgrad: bool = False,
) -> torch.optim.Optimizer:
    """SGD (``"sgd"``, Nesterov by default, the reference recipe), AdamW (``"adamw"``) or Adam (``"adam"``: betas
    (0.9, 0.999), eps 1e-8, ``weight_decay`` as L2 added to the gradient, ``amsgrad`` as given; RFNet's and
    mmFormer's published optimiser with ``amsgrad=True``)."""
    if lr <= 0:
        raise ValueError(f"learning rate must be positive, got {lr}")
    key = name.lower()
    if key == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    if key == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if key == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay, amsgrad=amsgrad)
    raise ValueError(f"unknown optimizer {name!r}; use one of {list(OPTIMIZERS)}")


def epochs_for(num_iterations: int, epoch_length: int) -> int:
    """Number of ignite epochs of ``epoch_length`` iterations covering ``num_iterations``."""
    if num_iterations < 1 or epoch_length < 1:
        raise ValueError(f"num_iterations and epoch_length must be >= 1, got {num_iterations}, {epoch_length}")
    return math.ceil(num_iterations / epoch_length)


def setup_logging(level: str = "INFO") -> None:
    """Route lckd_med and MONAI loggers to the console once (the bundle's logging.conf does the same), and show
    input errors as one line (:func:`install_error_hook`); every bundle config calls this in ``initialize``."""
    install_error_hook()
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("lckd_med", "monai", "ignite"):
        logging.getLogger(name).setLevel(level)


#: Errors that describe bad input (files, arguments): shown as one line when raised by lckd_med code.
_USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)
_PACKAGE_DIR = str(Path(__file__).resolve().parents[1])


def user_error_of(exc: BaseException) -> BaseException | None:
    """The lckd_med input error at the root of ``exc``, if any.

    MONAI's config parser wraps an error raised while building or running a component in ``RuntimeError("Failed to
    evaluate ...")``; the deepest exception of the ``__cause__``/``__context__`` chain that is an input error is the
    one the user needs: its type is one of ``ValueError``, ``FileNotFoundError``, ... and it was raised in lckd_med's
    own code, or it is an ``OSError`` naming a path (``Permission denied: '/data/out'``, a folder path that is a file).
    Other errors raised only by libraries keep their traceback: they may be bugs.
    """
    found, node, seen = None, exc, set()
    while node is not None and id(node) not in seen:  # outermost -> innermost; the deepest match wins
        seen.add(id(node))
        if isinstance(node, _USER_ERRORS):
            frames = traceback.extract_tb(node.__traceback__)
            if frames and frames[-1].filename.startswith(_PACKAGE_DIR):
                found = node
            elif isinstance(node, OSError) and node.filename is not None:  # e.g. makedirs on a file or read-only dir
                found = node
        # an error raised ``from None`` replaces its context: the context is not the message to show
        node = node.__cause__ or (None if node.__suppress_context__ else node.__context__)
    return found


def _error_hook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt) and not os.environ.get("LCKD_DEBUG"):  # Ctrl-C outside a training loop
        sys.stderr.write("error: interrupted (Ctrl-C)\n")
        sys.stderr.flush()
        return
    found = None if os.environ.get("LCKD_DEBUG") else user_error_of(exc)
    if found is None:
        sys.__excepthook__(kind, exc, tb)
        return
    hint = "; check that path and its permissions" if isinstance(found, OSError) and found.filename else ""
    sys.stderr.write(f"error: {found}{hint}\n(set LCKD_DEBUG=1 to see the traceback)\n")
    sys.stderr.flush()


def install_error_hook() -> None:
    """Print an input error raised by lckd_med (a bad file, folder or argument) as one ``error:`` line naming the
    file and the fix, instead of a traceback through MONAI's config parser. Exit status stays 1.
    ``LCKD_DEBUG=1`` shows the traceback."""
    sys.excepthook = _error_hook
