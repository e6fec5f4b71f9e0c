"""Self-describing, atomically written checkpoints that load with ``torch.load(weights_only=True)``.

A checkpoint is a plain dictionary of tensors, numbers, strings, lists and dicts -- no pickled objects -- so
it can be opened safely and the network rebuilt from it without any config:

``format``            ``"lckd_med.checkpoint/1"``
``network``           ``{"name": str, "hparams": dict}``: the registered network class and its constructor arguments
                      (rebuilt through the method registry, see :func:`build_network`)
``model``             network ``state_dict`` (DDP / compile wrappers removed)
``modalities``        modality order, ``regions`` output order, ``label_convention`` name
``modality_spec``     the :class:`~lckd_med.modalities.ModalitySpec` (``to_dict``); absent before specs existed,
                      which means BraTS
``method_state``      the training method's own state (:meth:`lckd_med.methods.TrainingMethod.state_dict`; LCKD's
                      ``teachers`` and election ``history``); release 0.3.0 wrote LCKD's as top-level ``teachers``
                      and ``election_history`` (such checkpoints load for inference, not for resuming)
``iteration``/``epoch``/``phase``  training progress; ``optimizer``/``scheduler``/``rng`` for resuming
``subset_dice``       per-subset validation Dice ``{subset: {region: dice}}`` once evaluation has stored it
``method``            the registered method name (``lckd_med.methods.METHODS``); ``train_config`` a JSON-able dict
                      of the recipe
``weights_sha256``    content hash of ``model`` (:func:`weights_hash`), recorded by :func:`save_checkpoint`
``grad_params``       parameters holding a gradient when saved (training state, see the checkpoint handler)

Integrity: ``torch.load`` does not check the zip's CRCs, so a bit flip inside a tensor loads silently.
:func:`save_checkpoint` records the SHA-256 of the weights and :func:`load_checkpoint` verifies it (files written
before the hash existed load without that check); it also refuses non-finite weights and weights beyond
:data:`MAX_ABS_WEIGHT` (a diverged training or a corrupted file), naming the tensor.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lckd_med.constants import REGIONS
from lckd_med.methods.registry import network_class
from lckd_med.modalities import BRATS, ModalitySpec, spec_of
from lckd_med.utils.io import atomic_path, zip_entries

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "save_checkpoint",
    "load_checkpoint",
    "unwrap_model",
    "rng_state",
    "set_rng_state",
    "build_network",
    "checkpoint_spec",
    "check_network_spec",
    "MAX_ABS_WEIGHT",
    "weights_hash",
    "check_weights",
]

CHECKPOINT_FORMAT = "lckd_med.checkpoint/1"
#: File name of the checkpoint inside ``ckpt_dir``.
CHECKPOINT_NAME = "model.pt"
_REQUIRED_KEYS = ("format", "network", "model", "modalities", "regions", "label_convention")
#: Largest absolute value a weight of a trained network may have: trained convolution and normalisation weights stay
#: within about 10; a value beyond this is a diverged training or a corrupted file.
MAX_ABS_WEIGHT: float = 1e6


def weights_hash(state: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a state dict's content: every entry's name, dtype, shape and bytes, in name order.

    The same weights give the same hash whatever file holds them (``model.pt``, a ``.safetensors`` export).
    """
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name]
        if not torch.is_tensor(t):
            h.update(f"{name}:{t!r};".encode())
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{str(t.dtype).removeprefix('torch.')}:{list(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_weights(state: Any, source: str, expected_hash: str | None = None) -> None:
    """Refuse weights that cannot be a trained network's: not a dict of tensors, non-finite or beyond
    :data:`MAX_ABS_WEIGHT` values, or content that differs from ``expected_hash`` (:func:`weights_hash`).

    Raises:
        ValueError: naming ``source``, the tensor and what is wrong.
    """
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise ValueError(f"{source}: the weights ('model') are not a dictionary of named tensors")
    for name, t in state.items():
        if not t.is_floating_point() or t.numel() == 0:
            continue
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            raise ValueError(
                f"{source}: weight {name} holds {int((~finite).sum())} NaN or infinite value(s) (a diverged training "
                "or a corrupted file); use an earlier checkpoint or retrain"
            )
        peak = float(t.abs().max())
        if peak > MAX_ABS_WEIGHT:
            raise ValueError(
                f"{source}: weight {name} holds a value of magnitude {peak:.3g}, beyond {MAX_ABS_WEIGHT:g} "
                "(lckd_med.engines.checkpoint.MAX_ABS_WEIGHT): a diverged training or a corrupted file"
            )
    if expected_hash is not None and weights_hash(state) != expected_hash:
        raise ValueError(
            f"{source}: the weights differ from the content hash recorded when the file was written (weights_sha256): "
            "the file was corrupted (e.g. bits flipped on disk or in transfer) or edited; use another copy"
        )


def unwrap_model(net: torch.nn.Module) -> torch.nn.Module:
    """The bare module under DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if hasattr(net, "module") and isinstance(net.module, torch.nn.Module):
            net = net.module
        elif hasattr(net, "_orig_mod") and isinstance(net._orig_mod, torch.nn.Module):
            net = net._orig_mod
        else:
            return net


def _pack_numpy_state(np_state: tuple) -> dict[str, Any]:
    return {
        "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
        "pos": int(np_state[2]),
        "has_gauss": int(np_state[3]),
        "cached_gaussian": float(np_state[4]),
    }


def _unpack_numpy_state(n: Mapping[str, Any]) -> tuple:
    keys = np.asarray(n["keys"].cpu().numpy() if torch.is_tensor(n["keys"]) else n["keys"], dtype=np.uint32)
    return ("MT19937", keys, int(n["pos"]), int(n["has_gauss"]), float(n["cached_gaussian"]))


def rng_state(generators: Mapping[str, np.random.RandomState] | None = None) -> dict[str, Any]:
    """Python, NumPy and torch RNG states as weights-only-loadable values (lists and tensors).

    Args:
        generators: extra NumPy generators to save by name, e.g. a MONAI transform's ``R`` (the modality
            dropout), so a resumed run draws what the uninterrupted run would have drawn.
    """
    state: dict[str, Any] = {
        "python": [list(random.getstate()[1]), random.getstate()[0], random.getstate()[2]],
        "numpy": _pack_numpy_state(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generators:
        state["generators"] = {name: _pack_numpy_state(g.get_state()) for name, g in generators.items()}
    return state


def set_rng_state(state: Mapping[str, Any], generators: Mapping[str, np.random.RandomState] | None = None) -> None:
    """Restore the states saved by :func:`rng_state` (missing entries are left alone), including the named
    extra ``generators`` present in both."""
    if "python" in state:
        internal, version, gauss = state["python"]
        random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    if "numpy" in state:
        np.random.set_state(_unpack_numpy_state(state["numpy"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    for name, g in (generators or {}).items():
        if name in state.get("generators", {}):
            g.set_state(_unpack_numpy_state(state["generators"][name]))


def save_checkpoint(path: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically (temporary file in the same folder, then rename), with the content
    hash of its weights (``weights_sha256``, verified by :func:`load_checkpoint`).

    A crash while writing leaves the previous checkpoint intact and no partial file behind.

    Raises:
        ValueError: the payload lacks a required key.
    """
    missing = [k for k in _REQUIRED_KEYS if k not in payload]
    if missing:
        raise ValueError(f"checkpoint payload lacks required keys {missing}")
    path = Path(path)
    payload = {**payload, "weights_sha256": weights_hash(payload["model"])}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    return path


def load_checkpoint(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    modalities: ModalitySpec | Mapping[str, Any] | None = BRATS,
    flag: str = "ckpt_dir",
) -> dict[str, Any]:
    """Load and check a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Args:
        path: the ``model.pt`` file.
        map_location: where tensors are loaded.
        modalities: the modality spec the caller's data has (default BraTS; e.g. the datalist's, see
            :func:`lckd_med.data.datalist.datalist_spec`); the checkpoint's must describe the same input.
            ``None`` accepts any spec (read it with :func:`checkpoint_spec`).
        flag: how the user gave the file (``ckpt_dir`` of the bundles, ``--ckpt`` of ``lckd-med``), named in the
            messages.

    Raises:
        FileNotFoundError: no file at ``path`` (the message says how to make one, or which command converts the
            ``.safetensors`` export found there).
        IsADirectoryError: ``path`` is a folder.
        ValueError: the file is not an lckd_med checkpoint, its weights are broken (non-finite, absurdly large, or
            not the content whose hash was recorded: see :func:`check_weights`), its region order differs from ours,
            or its modality spec differs from ``modalities`` (the message lists what differs).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give the checkpoint file (model.pt) inside it")
    exports = sorted(path.parent.glob("*.safetensors")) if not path.is_file() and path.parent.is_dir() else []
    if path.name.lower().endswith(".safetensors") or exports:
        export = path if path.name.lower().endswith(".safetensors") else exports[0]
        what = (
            f"{path} is a .safetensors export" if export == path else f"no {path.name} in {path.parent}, only {export}"
        )
        raise FileNotFoundError(
            f"{what}: make a checkpoint from it with `lckd-med import-safetensors --weights {export} -o "
            f"{path.with_name(CHECKPOINT_NAME)}` (lckd-med predict --ckpt takes the .safetensors file as it is)"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}; train first (python -m monai.bundle run training ...) "
            f"or point {flag} at {'the folder holding model.pt' if flag == 'ckpt_dir' else 'a model.pt'}"
        )
    if _is_torchscript(path):
        raise ValueError(
            f"{path} is a TorchScript export (python -m monai.bundle ckpt_export): it runs on its own "
            f"(torch.jit.load) but cannot be turned back into a checkpoint; give {flag} the model.pt it was exported from"
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt file or pickled objects: both are refused
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        if "Weights only load failed" in why:  # torch's multi-paragraph advice is about trusting the file: we do not
            why = "it holds pickled Python objects or is not a torch file"
        raise ValueError(
            f"{path}: not a readable lckd_med checkpoint ({why}); point {flag} at a "
            "model.pt written by lckd_med training (pickled whole-model files are refused for safety)"
        ) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not an lckd_med checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    missing = [k for k in _REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks keys {missing}")
    recorded = ckpt.get("weights_sha256")
    check_weights(ckpt["model"], str(path), recorded if isinstance(recorded, str) else None)
    spec = checkpoint_spec(ckpt, source=str(path))
    expected = None if modalities is None else spec_of(modalities)
    if tuple(ckpt["regions"]) != REGIONS:
        raise ValueError(
            f"{path}: checkpoint region order {ckpt['regions']} differs from this lckd_med ({list(REGIONS)})"
        )
    if expected is not None:
        spec.check_same(expected, f"checkpoint {path}", f"the data ({expected.name})")
    return ckpt


def _is_torchscript(path: Path) -> bool:
    """``path`` is a TorchScript archive (a zip with ``code/`` and ``constants.pkl`` entries)."""
    names = zip_entries(path) or []
    return any("/code/" in n for n in names) and any(n.endswith("/constants.pkl") for n in names)


def checkpoint_spec(ckpt: Mapping[str, Any], source: str = "checkpoint") -> ModalitySpec:
    """The modality spec a checkpoint records (BraTS for checkpoints written before specs existed).

    Raises:
        ValueError: an invalid ``modality_spec`` entry, or one whose names disagree with ``modalities``.
    """
    try:
        spec = spec_of(ckpt.get("modality_spec"))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: invalid modality_spec: {e}") from None
    if "modalities" in ckpt and tuple(ckpt["modalities"]) != spec.names:
        raise ValueError(
            f"{source}: channel order {list(ckpt['modalities'])} disagrees with its modality_spec names "
            f"{list(spec.names)}"
        )
    return spec


def check_network_spec(hparams: Mapping[str, Any], spec: ModalitySpec, what: str = "network") -> None:
    """Raise unless a network's hyper-parameters take the input a modality spec describes.

    Networks store ``in_modalities``, ``in_channels`` and ``spatial_dims`` (older hparams lack the last two:
    one channel each, 3-D).

    Raises:
        ValueError: naming each mismatch.
    """
    num = int(hparams.get("in_modalities", spec.num_modalities))
    channels = tuple(hparams.get("in_channels") or (1,) * num)
    dims = int(hparams.get("spatial_dims", 3))
    diff = []
    if num != spec.num_modalities:
        diff.append(f"modalities {num} vs {spec.num_modalities}")
    if channels != spec.channels:
        diff.append(f"channels per modality {list(channels)} vs {list(spec.channels)}")
    if dims != spec.spatial_dims:
        diff.append(f"spatial_dims {dims} vs {spec.spatial_dims}")
    if diff:
        raise ValueError(f"{what} does not take the input of the {spec.name} modality spec: " + "; ".join(diff))


def build_network(ckpt: Mapping[str, Any], load_weights: bool = True) -> torch.nn.Module:
    """Rebuild the network described in a checkpoint (and load its weights).

    The class comes from the method registry (:func:`lckd_med.methods.network_class`), which knows every method's
    network and the classes of :data:`lckd_med.networks.NETWORKS`.

    Raises:
        ValueError: unknown network name.
    """
    spec = ckpt["network"]
    name = spec.get("name")
    try:
        cls = network_class(name)
    except ValueError as e:
        raise ValueError(f"checkpoint {e}") from None
    net = cls.from_hparams(dict(spec.get("hparams", {})))
    check_network_spec(getattr(net, "hparams", {}), checkpoint_spec(ckpt), f"checkpoint network {name}")
    if load_weights:
        net.load_state_dict(ckpt["model"])
    return net
