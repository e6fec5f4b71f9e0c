"""Helpers shared by the test modules (``from tests.testkit import ...``; pytest puts the repository root on the path):
NIfTI files with BraTS-like headers, small self-describing checkpoints, the ``$`` expressions of bundle configs.

Fixtures shared the same way (``one_thread``) are in ``tests/conftest.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from lckd_med.constants import MODALITIES, REGIONS
from lckd_med.engines.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from lckd_med.networks import LCKDNet, MMFormerNet, RFNet

__all__ = [
    "mri_like",
    "write_nifti",
    "tiny_lckd_net",
    "TINY_NETWORKS",
    "tiny_method_network",
    "tiny_size",
    "brats_label_batch",
    "PUBLISHED_WINDOW",
    "published_softmax_losses",
    "run_bundle",
    "tiny_rfnet",
    "tiny_mmformer",
    "published_rfnet_checkpoint",
    "published_mmformer_checkpoint",
    "checkpoint_payload",
    "save_tiny_checkpoint",
    "config_expressions",
    "merged_config",
]

#: Channels per level of the small networks the tests build.
TINY_FILTERS = (4, 8, 16)


def mri_like(shape: tuple[int, ...], seed: int = 0, low: float = 0.1, high: float = 1.1) -> np.ndarray:
    """A smooth random float32 volume with values in ``[low, high]`` (positive everywhere): on small test grids it
    passes the check that a sequence can be an MRI of a head (many distinct values, neighbouring voxels alike),
    which pure noise (``rng.random``) does not."""
    from scipy import ndimage

    field = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), sigma=1.5, mode="reflect")
    field = (field - field.min()) / max(float(np.ptp(field)), 1e-12)
    return (low + (high - low) * field).astype(np.float32)


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    """``data`` saved at ``path`` (parent folders made) with ``affine`` as qform and sform, codes 1, as BraTS files."""
    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, 1)
    img.header.set_sform(affine, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return path


def tiny_lckd_net(seed: int = 0, filters: tuple[int, ...] = TINY_FILTERS) -> LCKDNet:
    """An untrained LCKDNet, the same for the same ``seed``."""
    torch.manual_seed(seed)
    return LCKDNet(filters=filters)


#: Registered method name -> (network preset, options) of its tiny network; methods not listed use the U-Net preset
#: ``fullres`` with :data:`TINY_FILTERS`. mmFormer's window (``img_size``) is the smallest it takes, 32^3.
TINY_NETWORKS: dict[str, tuple[str, dict[str, Any]]] = {
    "rfnet": ("published", {"filters": TINY_FILTERS, "fusion_hidden": 8, "region_hidden": 4}),
    "mmformer": (
        "published",
        {"img_size": 32, "base_filters": 2, "embed_dim": 8, "mlp_dim": 16, "num_heads": 2, "dropout": 0.0},
    ),
}


def tiny_method_network(name: str, seed: int = 0, **options: Any) -> torch.nn.Module:
    """The untrained tiny network of registered method ``name`` (:data:`TINY_NETWORKS`), the same for the same
    ``seed``; ``options`` replace the table's."""
    from lckd_med.methods import build_network

    preset, table = TINY_NETWORKS.get(name, ("fullres", {"filters": TINY_FILTERS}))
    torch.manual_seed(seed)
    return build_network(name, preset, **{**table, **options})


def tiny_size(name: str, default: int = 16) -> int:
    """The cube side of an input of :func:`tiny_method_network` (mmFormer: its window; else ``default``)."""
    return TINY_NETWORKS[name][1].get("img_size", default) if name in TINY_NETWORKS else default


#: What the RFNet and mmFormer bundles record as a trained checkpoint's inference defaults besides the window
#: (``roi_size`` = the training crop): the published predict.py's overlap 0.5, mean of the windows' probabilities,
#: argmax.
PUBLISHED_WINDOW: dict[str, Any] = {
    "overlap": 0.5,
    "average": "probabilities",
    "mode": "constant",
    "decision": "argmax",
}


def brats_label_batch(batch: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(labels (B, 1, *S) int64 BraTS 2018 labels 0/1/2/4, regions (B, 3, *S) float32)``: a random label map with
    every label present and its region target made by the data pipeline's :class:`LabelToRegions`."""
    from lckd_med.data.transforms import LabelToRegions

    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([0, 1, 2, 4])[torch.randint(0, 4, (batch, 1, size, size, size), generator=g)]
    regions = torch.stack([torch.as_tensor(LabelToRegions("brats2018")(lab)) for lab in labels]).float()
    return labels, regions


def published_softmax_losses(
    fused_logits: torch.Tensor,
    per_modality_logits: Any,
    auxiliary_probs: Any,
    labels: torch.Tensor,
) -> tuple[float, float, float]:
    """``(fuse, sep, aux)`` as the published RFNet / mmFormer ``train.py`` computes them (RFNet train.py:165-182,
    mmFormer train.py:167-183): targets from the BraTS labels by ``seg[seg == 4] = 3`` and a one-hot; each term
    ``criterions.softmax_weighted_loss(p, t) + criterions.dice_loss(p, t)`` on *probabilities*, written out here
    from utils/criterions.py:11-36 of both (the functions themselves are pinned to the published values in
    ``tests/losses/test_softmax_seg.py``); the per-modality and auxiliary terms summed."""
    classes = labels.clone()
    classes[classes == 4] = 3
    target = torch.nn.functional.one_hot(classes[:, 0], 4).permute(0, 4, 1, 2, 3).double()

    def criterions(p: torch.Tensor) -> float:
        p = p.detach().double()
        cross = 0.0
        dice = 0.0
        for c in range(4):
            t, q = target[:, c], p[:, c]
            w = 1.0 - t.flatten(1).sum(1) / t.flatten(1).shape[1]  # per sample: 1 - class voxels / all voxels
            cross += -(w.view(-1, 1, 1, 1) * t * torch.log(q.clamp(0.005, 1))).mean()
            dice += 2 * (q * t).sum() / (q.sum() + t.sum() + 1e-7)
        return float(cross + 1.0 - dice / 4)

    fuse = criterions(torch.softmax(fused_logits.double(), 1))
    sep = sum(criterions(torch.softmax(p.double(), 1)) for p in per_modality_logits)
    aux = sum(criterions(p) for p in auxiliary_probs)
    return fuse, sep, aux


def run_bundle(run_id: str, bundle: str, *args: str, cwd: Path, configs: tuple[str, ...] = ()) -> str:
    """``python -m monai.bundle run <run_id>`` of ``bundle`` (LCKD's config for the run, then the bundle's overlay,
    then ``configs`` files of ``bundles/``) with ``args``, one thread; returns its log. Fails the test on an error."""
    import os
    import subprocess
    import sys

    from lckd_med.engines.workflow import bundle_dir

    name = {"training": "train.json", "evaluate": "evaluate.json", "inference": "inference.json"}[run_id]
    files = [Path(bundle_dir("lckd")) / name, Path(bundle_dir(bundle)) / name]
    files += [Path(bundle_dir(c.split("/")[0])) / c.split("/")[1] for c in configs]
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", run_id,
        "--config_file", "[" + ",".join(f"'{f}'" for f in files) + "]",
        "--meta_file", str(Path(bundle_dir(bundle)) / "metadata.json"), *args,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def tiny_rfnet(seed: int = 0) -> RFNet:
    """An untrained RFNet with the published four levels, narrow (a softmax over the four BraTS classes, output kind
    ``"classes"``), the same for the same ``seed``; inputs must be multiples of 8 and at least 16 per axis."""
    torch.manual_seed(seed)
    return RFNet(filters=(4, 8, 8, 8), fusion_hidden=4, region_hidden=4)


def tiny_mmformer(seed: int = 0) -> MMFormerNet:
    """An untrained mmFormer with a 32^3 window (the smallest), 2 base filters and 8-wide tokens in 8 heads (the
    published head count, which an imported checkpoint assumes), the same for the same ``seed``."""
    torch.manual_seed(seed)
    return MMFormerNet(img_size=32, base_filters=2, embed_dim=8, mlp_dim=16, num_heads=8)


def _published_wrapper(state: dict[str, torch.Tensor], prefix: str, wrapper: bool) -> dict[str, Any]:
    """The released form: ``module.`` keys in ``{'epoch', 'state_dict', 'optim_dict'}``."""
    state = {f"{prefix}{k}": v.detach().clone() for k, v in state.items()}
    return {"epoch": 299, "state_dict": state, "optim_dict": {"state": {}, "param_groups": []}} if wrapper else state


def published_rfnet_checkpoint(net: RFNet, prefix: str = "module.", wrapper: bool = True) -> dict[str, Any]:
    """``net``'s weights in the layout the RFNet authors saved (``dyh127/RFNet`` train.py:211-216): published key
    names (the inverse of :func:`lckd_med.networks.rfnet_import.published_key_map`; 1x1x1 convolutions for the
    modality-weight layers, input blocks and rows in the published modality order), ``prefix`` on every key, inside
    the ``{'epoch', 'state_dict', 'optim_dict'}`` wrapper unless ``wrapper`` is False."""
    from lckd_med.networks.rfnet_import import PUBLISHED_MODALITIES, published_key_map

    ours_to_pub = {ours: (pub, kind) for pub, (ours, kind) in published_key_map(net.out_channels).items()}
    to_published = [MODALITIES.index(m) for m in PUBLISHED_MODALITIES]  # our modality index of each published slot

    def blocks(value: torch.Tensor, extra: int) -> torch.Tensor:  # input-channel blocks: ours -> published order
        c = (value.shape[1] - extra) // len(MODALITIES)
        index = [i for m in to_published for i in range(m * c, (m + 1) * c)] + list(
            range(value.shape[1] - extra, value.shape[1])
        )
        return value[:, index]

    state = {}
    for key, value in net.state_dict().items():
        pub, kind = ours_to_pub[key]
        if kind == "permute_in":
            value = blocks(value, 0)
        elif kind == "linear_in":
            value = blocks(value, 1).reshape(*value.shape, 1, 1, 1)
        elif kind == "linear_out":
            value = value[to_published]
            value = value.reshape(*value.shape, 1, 1, 1) if value.dim() == 2 else value
        state[pub] = value
    return _published_wrapper(state, prefix, wrapper)


def published_mmformer_checkpoint(net: MMFormerNet, prefix: str = "module.", wrapper: bool = True) -> dict[str, Any]:
    """``net``'s weights in the layout the mmFormer authors saved (``YaoZhang93/mmFormer`` train.py:212-217): every
    key of the committed manifest (``tests/fixtures/mmformer/manifest.json``) named as published, shaped as ``net``'s
    counterpart; the four ``*_decode_conv`` convolutions the published forward never calls get zeros."""
    import json

    from lckd_med.networks.mmformer_import import UNUSED_PUBLISHED_KEYS, published_key_map

    manifest = json.loads((Path(__file__).parent / "fixtures" / "mmformer" / "manifest.json").read_text())
    ours = net.state_dict()
    state = {}
    for key, _, _ in manifest["keys"]:
        bare = key.removeprefix("module.")
        if UNUSED_PUBLISHED_KEYS.match(bare):
            shape = (net.filters[-1], net.embed_dim, 1, 1, 1) if bare.endswith("weight") else (net.filters[-1],)
            state[bare] = torch.zeros(shape)
        else:
            state[bare] = ours[published_key_map(bare)]
    return _published_wrapper(state, prefix, wrapper)


def checkpoint_payload(net: torch.nn.Module, **fields: Any) -> dict[str, Any]:
    """What ``model.pt`` holds for ``net`` (weights, network name and hyper-parameters, modality and region order,
    BraTS 2018 labels), with ``fields`` added or replacing those (``train_config``, ``method_state``, ...)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "network": {"name": type(net).__name__, "hparams": net.hparams},
        "model": net.state_dict(),
        "modalities": list(MODALITIES),
        "regions": list(REGIONS),
        "label_convention": "brats2018",
        **fields,
    }


def save_tiny_checkpoint(path: Path, seed: int = 0, net: torch.nn.Module | None = None, **fields: Any) -> Path:
    """``path`` holding ``net`` (default :func:`tiny_lckd_net`) trained with a 16^3 crop (``train_config.roi_size``),
    ``fields`` added or replacing as in :func:`checkpoint_payload`."""
    fields = {"train_config": {"roi_size": [16, 16, 16]}, **fields}
    return save_checkpoint(path, checkpoint_payload(tiny_lckd_net(seed) if net is None else net, **fields))


def config_expressions(node: Any) -> Iterator[str]:
    """Every ``$`` expression of a parsed bundle config (nested dicts and lists)."""
    if isinstance(node, dict):
        for v in node.values():
            yield from config_expressions(v)
    elif isinstance(node, list):
        for v in node:
            yield from config_expressions(v)
    elif isinstance(node, str) and node.startswith("$"):
        yield node


def merged_config(*paths: Path) -> dict:
    """The raw (unparsed) config MONAI builds from ``paths`` merged in order, as ``--config_file "[...]"`` does."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(p) for p in paths])
    return parser.get()
