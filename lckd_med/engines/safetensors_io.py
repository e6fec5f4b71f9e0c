"""Network weights of a checkpoint to and from ``.safetensors``: the format model hubs share, which carries no code.

``model.pt`` (:mod:`lckd_med.engines.checkpoint`) already loads with ``torch.load(weights_only=True)``; a
``.safetensors`` file is the same weights in a format every framework reads without unpickling anything. The
checkpoint's description travels as safetensors text metadata, so the file alone rebuilds the network:

``format``             ``"lckd_med.safetensors/1"``
``network``            JSON ``{"name": ..., "hparams": {...}}``
``modalities``/``regions``  JSON lists (channel and output order), ``label_convention`` its name
``method``, ``method_state``, ``train_config``, ``subset_dice``, ``iteration``, ``inference`` (recorded inference
                       defaults), ``published`` (an imported published model's provenance)  JSON, when present
``weights_sha256``     content hash of the weights (:func:`lckd_med.engines.checkpoint.weights_hash`), verified on read

Optimiser, scheduler and RNG states are left out: the file is for inference and sharing, not for resuming. An
imported ``model.pt`` says so (``imported_from``), and training refuses to resume from it. Every metadata entry is
checked when the file is read, and a bad one is named with the file, so a broken export fails at import, not later
with a message about something the user never set.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import save_file

from lckd_med.constants import REGIONS, label_convention
from lckd_med.engines.checkpoint import (
    CHECKPOINT_FORMAT,
    build_network,
    check_weights,
    checkpoint_spec,
    load_checkpoint,
    save_checkpoint,
    weights_hash,
)
from lckd_med.methods.registry import METHODS, network_classes
from lckd_med.utils.io import atomic_path, zip_entries
from lckd_med.utils.outputs import check_output_file

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
    "inference",
    "published",
)
_REQUIRED = ("format", "network", "modalities", "regions", "label_convention")


def export_safetensors(
    ckpt_path: str | os.PathLike, output: str | os.PathLike | None = None, overwrite: bool = False
) -> Path:
    """Write the network weights and description of ``ckpt_path`` to a ``.safetensors`` file (atomically).

    Args:
        ckpt_path: checkpoint written by :func:`lckd_med.engines.checkpoint.save_checkpoint`.
        output: file to write; default beside the checkpoint with the suffix ``.safetensors``.
        overwrite: replace an existing ``output`` (never the checkpoint itself).

    Raises:
        FileNotFoundError / ValueError: see :func:`lckd_med.engines.checkpoint.load_checkpoint`.
        FileExistsError: ``output`` exists and ``overwrite`` is False.
    """
    out = Path(output) if output is not None else Path(ckpt_path).with_suffix(".safetensors")
    if not out.name.endswith(".safetensors"):
        raise ValueError(f"output must end in .safetensors, got {out}")
    check_output_file(out, inputs=[ckpt_path], overwrite=overwrite, what="--output")
    ckpt = load_checkpoint(ckpt_path, map_location="cpu")
    meta = {"format": SAFETENSORS_FORMAT, "label_convention": str(ckpt["label_convention"])}
    meta.update({k: json.dumps(ckpt[k]) for k in _JSON_KEYS if ckpt.get(k) is not None})
    # safetensors refuses views sharing storage: give every tensor its own contiguous copy
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in ckpt["model"].items()}
    meta["weights_sha256"] = weights_hash(tensors)
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return out


def _check_metadata(ckpt: dict[str, Any], source: str) -> None:
    """Refuse metadata entries that are not what :func:`export_safetensors` writes, naming the key.

    Raises:
        ValueError: ``<file>: metadata '<key>' ...``.
    """

    def bad(key: str, why: str) -> ValueError:
        return ValueError(f"{source}: metadata {key!r} {why}; re-export the file with `lckd-med export-safetensors`")

    network = ckpt.get("network")
    if not isinstance(network, dict) or not isinstance(network.get("name"), str):
        raise bad("network", 'must be {"name": ..., "hparams": {...}}')
    known = network_classes()
    if network["name"] not in known:
        raise bad("network", f"names an unknown network {network['name']!r} (known: {sorted(known)})")
    if not isinstance(network.get("hparams", {}), dict):
        raise bad("network", "has hparams that are not a dictionary")
    if not isinstance(ckpt.get("modalities"), list) or not all(isinstance(m, str) for m in ckpt["modalities"]):
        raise bad("modalities", "must be a list of modality names")
    if ckpt.get("regions") != list(REGIONS):
        raise bad("regions", f"must be {list(REGIONS)}, got {ckpt.get('regions')!r}")
    try:
        label_convention(ckpt["label_convention"])
        checkpoint_spec(ckpt, source=source)
    except ValueError as e:
        key = "label_convention" if "release" in str(e) else "modality_spec"
        raise bad(key, f"is invalid ({e})") from None
    if "iteration" in ckpt and (isinstance(ckpt["iteration"], bool) or not isinstance(ckpt["iteration"], int)):
        raise bad("iteration", f"must be a whole number, got {ckpt['iteration']!r}")
    if "method" in ckpt and ckpt["method"] not in METHODS:
        raise bad("method", f"names an unknown method {ckpt['method']!r} (registered: {list(METHODS)})")
    for key in ("method_state", "train_config", "subset_dice", "inference", "published"):
        if key in ckpt and not isinstance(ckpt[key], dict):
            raise bad(key, "must be a dictionary")
    for subset, row in ckpt.get("subset_dice", {}).items():
        if not isinstance(row, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in row.values()
        ):
            raise bad("subset_dice", f"entry {subset!r} must map regions to Dice values in [0, 1]")


def _is_checkpoint(path: Path) -> bool:
    """``path`` is a ``torch.save`` zip archive (as ``model.pt``), not a TorchScript one (which holds ``code/``)."""
    names = zip_entries(path) or []
    return any(n.endswith("/data.pkl") for n in names) and not any("/code/" in n for n in names)


def read_safetensors(path: str | os.PathLike) -> dict[str, Any]:
    """A weights-only checkpoint dictionary (as :func:`load_checkpoint` returns) from a ``.safetensors`` file.

    Raises:
        FileNotFoundError: no file.
        ValueError: not a safetensors file, or not one written by :func:`export_safetensors`.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give the .safetensors file")
    if not path.is_file():
        raise FileNotFoundError(f"no safetensors file at {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # the library raises its own error types for malformed headers
        if _is_checkpoint(path):
            raise ValueError(
                f"{path} is an lckd_med checkpoint (model.pt), not a .safetensors file: make one with "
                f"`lckd-med export-safetensors --ckpt {path}` (lckd-med predict --ckpt takes either)"
            ) from None
        raise ValueError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e
    missing = [k for k in _REQUIRED if k not in meta]
    if meta.get("format") != SAFETENSORS_FORMAT or missing:
        raise ValueError(
            f"{path}: not an lckd_med safetensors export (format {meta.get('format')!r}, missing metadata {missing}); "
            "make one with `lckd-med export-safetensors`"
        )
    ckpt: dict[str, Any] = {"format": CHECKPOINT_FORMAT, "model": state, "label_convention": meta["label_convention"]}
    for k in _JSON_KEYS:
        if k in meta:
            try:
                ckpt[k] = json.loads(meta[k])
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: metadata {k!r} is not valid JSON ({e}); re-export the file") from None
    _check_metadata(ckpt, str(path))
    check_weights(state, str(path), meta.get("weights_sha256"))
    return ckpt


def import_safetensors(path: str | os.PathLike, output: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write an inference checkpoint (``model.pt``) from a ``.safetensors`` export, after rebuilding the network
    and loading the weights strictly (a file whose weights do not fit its description is refused).

    Args:
        path: the ``.safetensors`` file.
        output: the checkpoint to write; an existing file (e.g. a training checkpoint, whose optimiser and election
            state would be lost) is replaced only with ``overwrite``, the input never.

    Raises:
        FileNotFoundError / ValueError: see :func:`read_safetensors`; weights that do not fit the network.
        FileExistsError: ``output`` exists and ``overwrite`` is False.
    """
    check_output_file(output, inputs=[path], overwrite=overwrite, what="--output")
    ckpt = read_safetensors(path)
    try:
        build_network(ckpt, load_weights=True)
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: metadata 'network' does not fit the weights it describes ({e})") from e
    ckpt["imported_from"] = str(Path(path).resolve())
    return save_checkpoint(output, ckpt)
