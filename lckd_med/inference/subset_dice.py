"""The reliability card's numbers: per-subset mean Dice of an evaluation, in ``subset_dice.json`` beside ``model.pt``.

Evaluation (:mod:`lckd_med.inference.evaluation`) writes it; batch inference (:mod:`lckd_med.inference.batch`)
reads it to put the expected Dice of each case's sequences in its report. The checkpoint itself is never rewritten.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

__all__ = ["SUBSET_DICE_NAME", "read_subset_dice"]

logger = logging.getLogger(__name__)

#: Per-subset mean Dice of the last evaluation, beside ``model.pt`` (evaluation never rewrites the checkpoint).
SUBSET_DICE_NAME = "subset_dice.json"


def read_subset_dice(ckpt_path: str | os.PathLike, ckpt: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``{subset: {region: mean Dice}}`` for a checkpoint: its ``subset_dice.json`` when that was made from this
    checkpoint (same iteration), else a ``subset_dice`` entry older versions stored inside ``model.pt``, else ``{}``.
    """
    path = Path(ckpt_path).with_name(SUBSET_DICE_NAME)
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            if int(data["source"]["iteration"]) == int(ckpt.get("iteration", 0)):
                return {str(k): dict(v) for k, v in data["subset_dice"].items()}
            logger.warning("%s was made from another iteration of %s; not used", path, Path(ckpt_path).name)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            logger.warning("ignoring unreadable %s: %s", path, e)
    return dict(ckpt.get("subset_dice") or {})
