"""Training engines and handlers: the one ignite trainer (runs any method), teacher election, checkpoints,
progress, bundle glue."""

from __future__ import annotations

from lckd_med.engines.checkpoint import build_network, load_checkpoint, save_checkpoint
from lckd_med.engines.checkpoint_handler import CHECKPOINT_NAME, TrainingCheckpointHandler
from lckd_med.engines.election import TeacherElectionHandler, elect_teachers, single_modality_dice
from lckd_med.engines.progress import ProgressHandler
from lckd_med.engines.schedules import LR_SCHEDULES, TwoPhasePolyLR, make_lr_scheduler, two_phase_poly_factor
from lckd_med.engines.settings import SETTINGS, check_settings
from lckd_med.engines.trainer import MethodTrainer, loss_terms
from lckd_med.engines.workflow import (
    DatasetNotFoundError,
    bundle_datalist,
    bundle_dir,
    datalist_meta,
    ensure_synthetic,
    epochs_for,
    load_split,
    make_optimizer,
    prepare_datalist,
    recipe_of,
    setup_logging,
)

__all__ = [
    "LR_SCHEDULES",
    "TwoPhasePolyLR",
    "make_lr_scheduler",
    "two_phase_poly_factor",
    "CHECKPOINT_NAME",
    "DatasetNotFoundError",
    "MethodTrainer",
    "ProgressHandler",
    "TeacherElectionHandler",
    "TrainingCheckpointHandler",
    "build_network",
    "bundle_datalist",
    "bundle_dir",
    "datalist_meta",
    "ensure_synthetic",
    "recipe_of",
    "elect_teachers",
    "epochs_for",
    "load_checkpoint",
    "load_split",
    "loss_terms",
    "make_optimizer",
    "prepare_datalist",
    "save_checkpoint",
    "setup_logging",
    "single_modality_dice",
    "SETTINGS",
    "check_settings",
]
