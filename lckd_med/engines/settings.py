"""The bundles' settings, typed: one declarative table of every top-level key a user may override.

``python -m monai.bundle run ... --amp false --batch_size 0`` hands the config values as ``fire`` parsed them:
``"false"`` stays a (truthy) string, ``nan`` is text, ``0`` is accepted by the config. Every bundle config runs
:func:`check_settings` right after ``setup_logging()`` in its ``initialize`` list, before any component is built:
each key of :data:`SETTINGS` present in the config whose value is a plain value (not a ``$`` expression or ``@``
reference) is parsed into its type (:mod:`lckd_med.utils.parse`) and written back, so ``"false"`` becomes ``False``
everywhere and a bad value ends the run with one line, ``error: --batch_size must be a whole number >= 1, got 0``
(exit status 1, no traceback; ``LCKD_DEBUG=1`` shows it). The same table serves all bundles (lckd, omd, hemis,
their overlays): a key means the same thing in each. ``tests/engines/test_settings.py`` checks that every plain
top-level key of every bundle config has an entry and that a bad value of each gives one line.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from lckd_med.constants import GRID_RULES, MODALITIES, label_convention
from lckd_med.data.datalist import SPLITS
from lckd_med.data.pipelines import AUGMENTATIONS, CROP_SAMPLINGS, INTENSITY_NORMS
from lckd_med.data.transforms import DROPOUT_DISTRIBUTIONS, DROPOUT_GRANULARITIES
from lckd_med.engines.election import ELECTION_SCORES
from lckd_med.engines.schedules import LR_SCHEDULES
from lckd_med.engines.workflow import OPTIMIZERS
from lckd_med.losses.distillation import KD_DISTANCES, KD_REDUCTIONS
from lckd_med.losses.segmentation import BCE_REDUCTIONS
from lckd_med.methods.registry import METHODS
from lckd_med.metrics import HD95_METHODS
from lckd_med.metrics.postprocess import POSTPROCESSINGS
from lckd_med.networks.fusion import FILL_LEVELS
from lckd_med.networks.omd_net import RESTORE_LEVELS
from lckd_med.networks.presets import NETWORK_PRESETS, PRESETS
from lckd_med.prediction import BLEND_MODES, WINDOW_AVERAGES, resolve_device
from lckd_med.utils.parse import (
    optional,
    parse_bool,
    parse_choice,
    parse_float,
    parse_int,
    parse_int_list,
    parse_str_list,
    parse_text,
)

__all__ = [
    "Setting",
    "SETTINGS",
    "TRAINING_SETTINGS",
    "COMPONENT_KEYS",
    "check_settings",
    "apply_settings",
    "active_parser",
    "export_target",
]


@dataclass(frozen=True)
class Setting:
    """How one bundle key is parsed.

    Attributes:
        parse: ``(value, name) -> typed value``; raises ``ValueError`` naming ``name`` for a bad value.
        bad: values it must refuse (the tests give each one).
    """

    parse: Callable[[Any, str], Any]
    bad: tuple[Any, ...]


def _p(parser: Callable[..., Any], **kwargs: Any) -> Callable[[Any, str], Any]:
    return functools.partial(parser, **kwargs) if kwargs else parser  # type: ignore[return-value]


def _device(value: Any, name: str) -> torch.device:
    if isinstance(value, torch.device):
        return resolve_device(value)
    try:
        return resolve_device(parse_text(value, name).strip())
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None


def _convention(value: Any, name: str) -> str:
    try:
        return label_convention(value).name
    except (ValueError, TypeError) as e:
        raise ValueError(f"{name}: {e}") from None


def _bool() -> Setting:
    return Setting(parse_bool, ("maybe", 2))


def _int(minimum: int, nullable: bool = False) -> Setting:
    parse = _p(parse_int, minimum=minimum)
    bad: tuple[Any, ...] = ("abc", 1.5, minimum - 1)
    return Setting(optional(parse) if nullable else parse, bad)


def _float(**bounds: Any) -> Setting:
    bad: tuple[Any, ...] = ("abc", "nan", "inf")
    if "low" in bounds:
        bad += (bounds["low"] - 1,)
    return Setting(_p(parse_float, **bounds), bad)


def _choice(choices: Any) -> Setting:
    return Setting(_p(parse_choice, choices=tuple(choices)), ("no_such_choice", 3))


def _ints(length: int | None = None, minimum: int | None = None, nullable: bool = False) -> Setting:
    parse = _p(parse_int_list, length=length, minimum=minimum)
    bad: tuple[Any, ...] = ("[1,x]", "abc") + (("[16,16]",) if length == 3 else ())
    return Setting(optional(parse) if nullable else parse, bad)


_TEXT = Setting(parse_text, ("",))
_DEVICE = Setting(_device, ("cuda:7" if not torch.cuda.is_available() else "cuda:999", "gpu", ""))

#: Every top-level bundle key a user may set on the command line, and how it is parsed.
SETTINGS: Mapping[str, Setting] = {
    # folders and files
    "bundle_root": _TEXT,
    "dataset_dir": _TEXT,
    "output_dir": _TEXT,
    "ckpt_dir": _TEXT,
    "ckpt_path": _TEXT,
    "datalist": _TEXT,
    "input_dir": _TEXT,
    "manifest": Setting(optional(parse_text), ("",)),
    # data and splits
    "folds": _int(3),
    "seed": _int(0),
    "demo_cases": _int(1),
    "split": _choice(SPLITS),
    "label_convention": Setting(optional(_convention), ("brats1999", "latest")),
    "cache_rate": _float(low=0.0, high=1.0),
    "intensity": _choice(INTENSITY_NORMS),
    "crop_sampling": _choice(CROP_SAMPLINGS),
    "augmentation": _choice(AUGMENTATIONS),
    "num_workers": _int(0),
    "val_max_cases": _int(1, nullable=True),
    "max_cases": _int(1, nullable=True),
    # device
    "device": _DEVICE,
    "amp": _bool(),
    "dist_backend": _choice(("nccl", "gloo")),
    # network
    "network_preset": _choice(
        [
            *PRESETS,
            *NETWORK_PRESETS,
            *dict.fromkeys(p for cls in METHODS.values() for p in cls.presets if p not in PRESETS),
        ]
    ),
    "filters": _ints(minimum=1, nullable=True),
    "share_encoder": Setting(optional(parse_bool), ("maybe", 2)),  # null: the preset's choice
    "fill_levels": _choice(FILL_LEVELS),
    "restore_levels": _choice(RESTORE_LEVELS),
    "restore_kernel_size": _int(1),
    "translate_kernel_size": _int(1),
    "fusion_hidden": _int(1, nullable=True),
    "region_hidden": _int(1, nullable=True),
    "base_filters": _int(1, nullable=True),
    "embed_dim": _int(1, nullable=True),
    "mlp_dim": _int(1, nullable=True),
    "num_heads": _int(1, nullable=True),
    "depth": _int(1, nullable=True),
    "transformer_dropout": _float(low=0.0, high=1.0, high_open=True),
    # schedule and optimiser
    "roi_size": _ints(length=3, minimum=1, nullable=True),
    "batch_size": _int(1),
    "num_samples": _int(1),
    "num_iterations": _int(1),
    "phase1_iterations": _int(0),
    "epoch_length": _int(1),
    "optimizer_name": _choice(OPTIMIZERS),
    "amsgrad": _bool(),
    "learning_rate": _float(low=0.0, low_open=True),
    "momentum": _float(low=0.0, high=1.0, high_open=True),
    "weight_decay": _float(low=0.0),
    "lr_schedule": _choice(LR_SCHEDULES),
    "poly_power": _float(low=0.0, low_open=True),
    "phase2_overlap": _int(0),
    "save_every_epochs": _int(1),
    "log_every": _int(1),
    "resume": _bool(),
    # methods
    "method_name": _choice(METHODS),
    "bce_reduction": _choice(BCE_REDUCTIONS),
    "kd_weight": _float(low=0.0),
    "dice_smooth_dr": _float(low=0.0),
    "kd_distance": _choice(KD_DISTANCES),
    "kd_reduction": _choice(KD_REDUCTIONS),
    "kd_levels": _ints(),
    "default_teachers": Setting(_p(parse_str_list, choices=MODALITIES), ("[t3]", "abc")),
    "election_interval": _int(0),
    "first_election": _int(1, nullable=True),
    "elect_at_phase_switch": _bool(),
    "election_score": _choice(ELECTION_SCORES),
    "reset_teachers_at_phase_switch": _bool(),
    "dropout_distribution": _choice(DROPOUT_DISTRIBUTIONS),
    "dropout_granularity": _choice(DROPOUT_GRANULARITIES),
    "dropout_max_kept": _int(1),
    "mmd_weight": _float(low=0.0),
    "kl_weight": _float(low=0.0),
    "kl_temperature": _float(low=0.0, low_open=True),
    "real_seg_weight": _float(low=0.0),
    "mmd_levels": _ints(nullable=True),
    "mmd_kernel_num": _int(1),
    "mmd_kernel_mul": _float(low=0.0, low_open=True),
    "mmd_max_samples": _int(1),
    "fusion_start_iteration": _int(0),
    "progress_state": Setting(parse_str_list, ("[1,2]", 3)),
    # sliding window, evaluation, inference
    # null (evaluation, inference): the checkpoint's recorded inference default, else the project's
    "sw_overlap": Setting(optional(_p(parse_float, low=0.0, high=1.0, high_open=True)), ("abc", "nan", "inf", -1.0)),
    "sw_mode": Setting(optional(_p(parse_choice, choices=BLEND_MODES)), ("no_such_choice", 3)),
    "hd95_method": _choice(HD95_METHODS),
    "postprocess_min_et": _int(0),
    "sw_average": Setting(optional(_p(parse_choice, choices=WINDOW_AVERAGES)), ("no_such_choice", 3)),
    "postprocess": _choice(POSTPROCESSINGS),
    "save_predictions": _bool(),
    "overwrite": _bool(),
    "grid": Setting(optional(_p(parse_choice, choices=(*MODALITIES, *GRID_RULES))), ("t3", "smallest", 3)),
    "png": _bool(),
    "save_probabilities": _bool(),
}

#: Top-level keys that hold components or code, not values a user sets (they may look like plain values: ``null``,
#: ``[]``); every other plain top-level key of a bundle config has an entry in :data:`SETTINGS`.
COMPONENT_KEYS: frozenset[str] = frozenset(
    {"imports", "teacher_state", "method_handlers", "initialize", "run", "finalize"}
)

#: Where training needs more than :data:`SETTINGS` allows (a config holding ``train`` is a training config).
TRAINING_SETTINGS: Mapping[str, Setting] = {"roi_size": _ints(length=3, minimum=1)}


def _is_expression(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("$", "@", "%"))


def active_parser() -> Any:
    """The MONAI ``ConfigParser`` evaluating the current config expression, or None outside a bundle run.

    MONAI hands an expression no handle on its parser; the parser is the ``self`` of the
    ``ConfigParser.get_parsed_content`` frame on the call stack.
    """
    from monai.bundle import ConfigParser

    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, ConfigParser):
            return candidate
        frame = frame.f_back
    return None


def apply_settings(parser: Any) -> dict[str, Any]:
    """Parse every plain value of ``parser``'s top-level :data:`SETTINGS` keys into its type and write it back.

    Returns:
        ``{key: typed value}`` of the keys parsed.

    Raises:
        ValueError: the first bad value, ``--<key> must be ..., got ...``.
    """
    table = {**SETTINGS, **(TRAINING_SETTINGS if "train" in parser.config else {})}
    typed = {}
    for key, setting in table.items():
        if key not in parser.config:
            continue
        raw = parser[key]
        if _is_expression(raw):
            continue
        value = setting.parse(raw, f"--{key}")
        typed[key] = value
        if type(value) is not type(raw) or value != raw:
            parser[key] = value
    return typed


def check_settings() -> None:
    """:func:`apply_settings` on the bundle config being run (called from its ``initialize`` list).

    Raises:
        ValueError: a bad value (one line through the bundle error hook, see :func:`~lckd_med.engines.workflow.
            install_error_hook`).
        RuntimeError: called outside a bundle config.
    """
    parser = active_parser()
    if parser is None:
        raise RuntimeError("check_settings() is called from a bundle config's initialize list")
    apply_settings(parser)


def export_target() -> tuple[str, str] | None:
    """``(filepath, ckpt_file)`` of the ``python -m monai.bundle ckpt_export`` run building the current config item,
    or None when the config is not being exported.

    ``ckpt_export`` builds ``network_def`` before it writes ``--filepath``, but hands the config neither path; they
    are its local variables on the call stack (MONAI 1.3 to 1.6 name them ``filepath_`` and ``ckpt_file_``).
    """
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "ckpt_export" and "filepath_" in frame.f_locals:
            return str(frame.f_locals["filepath_"]), str(frame.f_locals.get("ckpt_file_") or "")
        frame = frame.f_back
    return None
