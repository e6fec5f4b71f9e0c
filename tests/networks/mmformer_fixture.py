"""The deterministic inputs of the mmFormer fixtures (``tests/fixtures/mmformer/``): a formula volume, seeded
weights for every key of the published state-dict manifest, and readers for the committed JSON files.

The published model (YaoZhang93/mmFormer, ``mmformer/mmformer.py``) was run once, outside this repository, on
exactly these inputs; the JSON files hold what it returned. Nothing here depends on the published code.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "FIXTURE_DIR",
    "PUBLISHED_ORDER",
    "fixture_volume",
    "fixture_input",
    "load_manifest",
    "load_outputs",
    "published_state_dict",
    "seeded_tensor",
]

FIXTURE_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "mmformer"
#: channel order of the published code's input (``preprocess.py`` stacks flair, t1ce, t1, t2)
PUBLISHED_ORDER: tuple[str, ...] = ("flair", "t1ce", "t1", "t2")

# per modality: frequencies along the three axes and a phase (distinct, so that a swapped modality shows)
_COEFFICIENTS: dict[str, tuple[float, float, float, float]] = {
    "flair": (1.0, 2.0, 3.0, 0.0),
    "t1": (0.7, 3.1, 1.9, 2.0),
    "t1ce": (2.5, 1.5, 0.5, 1.0),
    "t2": (1.3, 0.9, 2.7, 3.0),
}


def fixture_volume(name: str, size: int = 128) -> torch.Tensor:
    """``(size, size, size)`` float32 volume of modality ``name``: a plane wave, an off-centre blob and a
    gradient, computed in float64 on voxel centres in ``[-1, 1]`` (no axis symmetry, so a flip or a transpose
    shows)."""
    a, b, c, phase = _COEFFICIENTS[name]
    t = (torch.arange(size, dtype=torch.float64) + 0.5) / size * 2 - 1
    u, v, w = torch.meshgrid(t, t, t, indexing="ij")
    blob = torch.exp(-((u - 0.3) ** 2 + (v + 0.2) ** 2 + (w - 0.1) ** 2) / 0.08)
    x = torch.sin(math.pi * (a * u + b * v + c * w) + phase) + (1 + 0.5 * phase) * blob + 0.3 * u * v - 0.2 * w
    return x.float()


def fixture_input(order: tuple[str, ...], size: int = 128) -> torch.Tensor:
    """``(1, len(order), size, size, size)``: :func:`fixture_volume` of each modality in ``order``."""
    return torch.stack([fixture_volume(name, size) for name in order]).unsqueeze(0)


def seeded_tensor(index: int, key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The value of the ``index``-th manifest entry: ``torch.randn(shape)`` from ``Generator().manual_seed(index)``,
    scaled by kind so that activations stay O(1) through the published network:

    * position embeddings (``*_pos``): ``0.5 * z``;
    * weights (2 or more dims): ``z * sqrt(2 / fan_in)`` (Kaiming for LeakyReLU/GELU), ``fan_in = prod(shape[1:])``;
    * LayerNorm (``.norm.`` in the key): weight ``1 + 0.1 * z``, bias ``0.1 * z``;
    * other biases: ``0.1 * z``.

    The values depend on torch's CPU normal generator (the fixtures were made with torch 2.13.0); should a torch
    release change it, the reproduction tests fail everywhere at once and the fixtures must be remade.
    """
    z = torch.randn(shape, generator=torch.Generator().manual_seed(index), dtype=torch.float32)
    if key.endswith("_pos"):
        return 0.5 * z
    if len(shape) >= 2:
        return z * math.sqrt(2.0 / math.prod(shape[1:]))
    if ".norm." in key and key.endswith(".weight"):
        return 1.0 + 0.1 * z
    return 0.1 * z


def load_manifest() -> dict[str, Any]:
    """``manifest.json``: source, counts and ``keys`` as ``[name, shape, dtype]`` in the published file's order."""
    return json.loads((FIXTURE_DIR / "manifest.json").read_text())


def load_outputs() -> dict[str, Any]:
    """``outputs.json``: the published model's outputs on :func:`fixture_input` with :func:`published_state_dict`."""
    return json.loads((FIXTURE_DIR / "outputs.json").read_text())


def published_state_dict(manifest: dict[str, Any] | None = None) -> OrderedDict[str, torch.Tensor]:
    """A state dict with the published key names (``module.`` prefix) and shapes, valued by :func:`seeded_tensor`."""
    manifest = load_manifest() if manifest is None else manifest
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for index, (key, shape, dtype) in enumerate(manifest["keys"]):
        out[key] = seeded_tensor(index, key, tuple(shape)).to(getattr(torch, dtype))
    return out
