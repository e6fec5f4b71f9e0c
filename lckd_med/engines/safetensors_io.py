"""Network weights of a checkpoint to and from ``.safetensors``: the format model hubs share, which carries no code.

``model.pt`` (:mod:`lckd_med.engines.checkpoint`) already loads with ``torch.load(weights_only=True)``; a
``.safetensors`` file is the same weights in a format every framework reads without unpickling anything. The
checkpoint's description travels as safetensors text metadata, so the file alone rebuilds the network:

``format``             ``"lckd_med.safetensors/1"``
``network``            JSON ``{"name": ..., "hparams": {...}}``
``modalities``/``regions``  JSON lists (channel and output order), ``label_convention`` its name
``method``, ``method_state``, ``train_config``, ``subset_dice``, ``iteration``  JSON, when the checkpoint has them

Optimiser, scheduler and RNG states are left out: the file is for inference and sharing, not for resuming.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import save_file

from lckd_med.engines.checkpoint import CHECKPOINT_FORMAT, build_network, load_checkpoint, save_checkpoint
from lckd_med.utils.io import atomic_path

__all__ = ["SAFETENSORS_FORMAT", "export_safetensors", "read_safetensors", "import_safetensors"]

SAFETENSORS_FORMAT = "lckd_med.safetensors/1"
_JSON_KEYS = (
    "network",
    "modalities",
    "modality_spec",
    "regions",
    "method",
    "method_state",
    "train_config",
    "subset_dice",
    "iteration",
)
_REQUIRED = ("format", "network", "modalities", "regions", "label_convention")


def export_safetensors(ckpt_path: str | os.PathLike, output: str | os.PathLike | None = None) -> Path:
    """Write the network weights and description of ``ckpt_path`` to a ``.safetensors`` file (atomically).

    Args:
        ckpt_path: checkpoint written by :func:`lckd_med.engines.checkpoint.save_checkpoint`.
        output: file to write; default beside the checkpoint with the suffix ``.safetensors``.

    Raises:
        FileNotFoundError / ValueError: see :func:`lckd_med.engines.checkpoint.load_checkpoint`.
    """
    ckpt = load_checkpoint(ckpt_path, map_location="cpu")
    out = Path(output) if output is not None else Path(ckpt_path).with_suffix(".safetensors")
    if not out.name.endswith(".safetensors"):
        raise ValueError(f"output must end in .safetensors, got {out}")
    meta = {"format": SAFETENSORS_FORMAT, "label_convention": str(ckpt["label_convention"])}
    meta.update({k: json.dumps(ckpt[k]) for k in _JSON_KEYS if ckpt.get(k) is not None})
    # safetensors refuses views sharing storage: give every tensor its own contiguous copy
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in ckpt["model"].items()}
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return out


def read_safetensors(path: str | os.PathLike) -> dict[str, Any]:
    """A weights-only checkpoint dictionary (as :func:`load_checkpoint` returns) from a ``.safetensors`` file.

    Raises:
        FileNotFoundError: no file.
        ValueError: not a safetensors file, or not one written by :func:`export_safetensors`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no safetensors file at {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # the library raises its own error types for malformed headers
        raise ValueError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e
    missing = [k for k in _REQUIRED if k not in meta]
    if meta.get("format") != SAFETENSORS_FORMAT or missing:
        raise ValueError(
            f"{path}: not an lckd_med safetensors export (format {meta.get('format')!r}, missing metadata {missing}); "
            "make one with `lckd-med export-safetensors`"
        )
    ckpt: dict[str, Any] = {"format": CHECKPOINT_FORMAT, "model": state, "label_convention": meta["label_convention"]}
    ckpt.update({k: json.loads(meta[k]) for k in _JSON_KEYS if k in meta})
    return ckpt


def import_safetensors(path: str | os.PathLike, output: str | os.PathLike) -> Path:
    """Write an inference checkpoint (``model.pt``) from a ``.safetensors`` export, after rebuilding the network
    and loading the weights strictly (a file whose weights do not fit its description is refused).

    Raises:
        FileNotFoundError / ValueError: see :func:`read_safetensors`; weights that do not fit the network.
    """
    ckpt = read_safetensors(path)
    try:
        build_network(ckpt, load_weights=True)
    except (RuntimeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: the weights do not fit the network it describes ({e})") from e
    return save_checkpoint(output, ckpt)
