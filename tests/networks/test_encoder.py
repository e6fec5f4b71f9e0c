"""UNetEncoder: per-level shapes, batch-1 1x1x1 bottleneck, argument validation."""

from __future__ import annotations

import pytest
import torch

from lckd_med.networks.encoder import UNetEncoder, default_strides
from lckd_med.networks.norm import SafeInstanceNorm


@pytest.mark.parametrize(
    ("strides", "size", "expected"),
    [
        (None, (16, 16, 16), [(16, 16, 16), (8, 8, 8), (4, 4, 4)]),
        (((1, 1, 1), (2, 2, 1), 2), (8, 8, 4), [(8, 8, 4), (4, 4, 4), (2, 2, 2)]),
        ((1, 3, 2), (12, 12, 6), [(12, 12, 6), (4, 4, 2), (2, 2, 1)]),
    ],
)
def test_level_shapes(strides, size, expected):
    enc = UNetEncoder(2, filters=(3, 5, 7), strides=strides)
    feats = enc(torch.randn(2, 2, *size))
    assert [tuple(f.shape) for f in feats] == [(2, c, *s) for c, s in zip((3, 5, 7), expected, strict=True)]


def test_size_divisor_and_defaults():
    enc = UNetEncoder(filters=(2, 2, 2, 2))
    assert enc.strides == default_strides(4) == ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2))
    assert enc.size_divisor == (8, 8, 8)
    assert UNetEncoder(filters=(2, 2), strides=((1, 1, 1), (2, 1, 2))).size_divisor == (2, 1, 2)
    assert any(isinstance(m, SafeInstanceNorm) for m in enc.modules())


def test_batch_one_training_with_1x1x1_bottleneck():
    enc = UNetEncoder(1, filters=(2, 4, 8)).train()
    x = torch.randn(1, 1, 4, 4, 4, requires_grad=True)
    feats = enc(x)
    assert feats[-1].shape == (1, 8, 1, 1, 1)
    sum(f.sum() for f in feats).backward()
    assert torch.isfinite(x.grad).all()


def test_dropout_layers_present_only_when_asked():
    def has_dropout(e):
        return any(isinstance(m, torch.nn.Dropout3d | torch.nn.Dropout) for m in e.modules())

    assert not has_dropout(UNetEncoder(filters=(2, 2)))
    assert has_dropout(UNetEncoder(filters=(2, 2), dropout=0.2))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"in_channels": 0}, ValueError, "in_channels"),
        ({"in_channels": 1.0}, ValueError, "in_channels"),
        ({"filters": ()}, ValueError, "filters"),
        ({"filters": (4, 0)}, ValueError, "filters"),
        ({"filters": (4, "8")}, ValueError, "filters"),
        ({"filters": "48"}, ValueError, "filters"),
        ({"filters": (4, 8), "strides": (1, 2, 2)}, ValueError, "one per level"),
        ({"filters": (4, 8), "strides": (1, 0)}, ValueError, r"strides\[1\]"),
        ({"filters": (4, 8), "strides": (1, (2, 2))}, ValueError, r"strides\[1\]"),
        ({"filters": (4, 8), "strides": 2}, ValueError, "strides"),
        ({"filters": (4, 8), "kernel_size": 2}, ValueError, "kernel_size"),
        ({"filters": (4, 8), "kernel_size": (3, 3)}, ValueError, "kernel_size"),
        ({"filters": (4, 8), "kernel_size": 0}, ValueError, "kernel_size"),
        ({"filters": (4, 8), "kernel_size": (3, 3, 4)}, ValueError, "kernel_size"),
        ({"filters": (4, 8), "kernel_size": 1, "strides": (1, 3)}, ValueError, "too large"),
        ({"filters": (4, 8), "dropout": -0.1}, ValueError, "dropout"),
        ({"filters": (4, 8), "dropout": 1.0}, ValueError, "dropout"),
        ({"filters": (4, 8), "dropout": True}, ValueError, "dropout"),
        ({"filters": (4, 8), "norm": 5}, TypeError, "norm"),
        ({"filters": (4, 8), "norm": ("instance", "affine")}, TypeError, "norm"),
        ({"filters": (4, 8), "act": ""}, TypeError, "act"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        UNetEncoder(**kwargs)
