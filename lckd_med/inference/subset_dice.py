"""The reliability card's numbers: per-subset mean Dice of an evaluation, in ``subset_dice.json`` beside ``model.pt``.

Evaluation (:mod:`lckd_med.inference.evaluation`) writes it; batch inference (:mod:`lckd_med.inference.batch`) and
``lckd-med predict`` read it to tell users what to expect from the sequences they have. The numbers belong to the
weights they were measured with: the file records the weights' content hash (``weights_sha256``) and the split,
datalist and number of cases; it is used only for a checkpoint whose weights have that hash, so a retrained or
replaced ``model.pt`` never shows another model's numbers. The checkpoint itself is never rewritten.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from lckd_med.engines.checkpoint import weights_hash

__all__ = ["SUBSET_DICE_NAME", "load_subset_dice", "read_subset_dice", "describe_source"]

logger = logging.getLogger(__name__)

#: Per-subset mean Dice of the last evaluation, beside ``model.pt`` (evaluation never rewrites the checkpoint).
SUBSET_DICE_NAME = "subset_dice.json"


def _ckpt_hash(ckpt: dict[str, Any]) -> str:
    recorded = ckpt.get("weights_sha256")
    return recorded if isinstance(recorded, str) else weights_hash(ckpt["model"])


def load_subset_dice(
    ckpt_path: str | os.PathLike, ckpt: dict[str, Any]
) -> tuple[dict[str, dict[str, float]], dict[str, Any] | None]:
    """``({subset: {region: mean Dice}}, source)`` for a checkpoint.

    From its ``subset_dice.json`` when that was measured with these weights (same ``weights_sha256``; ``source``
    then holds ``split``, ``datalist``, ``n_cases``), else from a ``subset_dice`` entry older versions stored inside
    ``model.pt`` (``source`` None: the split was not recorded), else ``({}, None)``.
    """
    path = Path(ckpt_path).with_name(SUBSET_DICE_NAME)
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            source = dict(data["source"])
            if source.get("weights_sha256") == _ckpt_hash(ckpt):
                return {str(k): dict(v) for k, v in data["subset_dice"].items()}, source
            logger.warning(
                "%s was measured with other weights than those of %s (retrained or replaced since); not used",
                path,
                Path(ckpt_path).name,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            logger.warning("ignoring unreadable %s: %s", path, e)
    return dict(ckpt.get("subset_dice") or {}), None


def read_subset_dice(ckpt_path: str | os.PathLike, ckpt: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The scores of :func:`load_subset_dice` without their source."""
    return load_subset_dice(ckpt_path, ckpt)[0]


def describe_source(source: dict[str, Any] | None) -> str:
    """Where the numbers come from, for people: ``"the testing split of datalist.json (12 cases)"``."""
    if not source:
        return "an evaluation stored in the checkpoint (split not recorded)"
    name = Path(str(source.get("datalist", "?"))).name
    return f"the {source.get('split', '?')} split of {name} ({source.get('n_cases', '?')} cases)"
