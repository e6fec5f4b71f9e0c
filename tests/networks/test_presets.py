"""Network presets: every preset builds every registered network class, overrides, the previous default network
kept as ``fullres``."""

from __future__ import annotations

import json

import pytest
import torch

from lckd_med.networks import (
    DEFAULT_PRESET,
    NETWORKS,
    PRESETS,
    LCKDNet,
    MissingModalityNet,
    OMDNet,
    build_preset,
    preset_hparams,
)

#: The registered U-Net networks the presets size (RFNet and mmFormer are published architectures of their own).
PRESET_NETWORKS = sorted(name for name, cls in NETWORKS.items() if issubclass(cls, MissingModalityNet))


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("network", PRESET_NETWORKS)
def test_every_preset_builds_every_registered_network(name, network):
    cls = NETWORKS[network]
    net = build_preset(name, network)
    assert type(net) is cls and type(build_preset(name, cls)) is cls
    assert net.filters == tuple(PRESETS[name]["filters"])
    assert net.strides[0] == tuple(PRESETS[name]["stem_stride"])
    rebuilt = cls.from_hparams(json.loads(json.dumps(net.hparams)))
    assert rebuilt.hparams == net.hparams


def test_presets_cover_the_u_nets():
    assert {"LCKDNet", "OMDNet"} <= set(PRESET_NETWORKS) and "RFNet" not in PRESET_NETWORKS


def test_default_preset_is_lean_with_reference_fill():
    assert DEFAULT_PRESET == "lean"
    net = build_preset()
    assert net.strides[0] == (2, 2, 1) and net.head_filters == 16 and net.fill_levels == "bottleneck"
    assert build_preset(network=OMDNet).fill_levels == "all"


def test_fullres_preset_is_the_previous_default_network():
    old, new = LCKDNet(fill_levels="all"), build_preset("fullres", fill_levels="all")
    assert old.hparams == new.hparams
    assert {k: v.shape for k, v in old.state_dict().items()} == {k: v.shape for k, v in new.state_dict().items()}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"filters": None, "share_encoder": None}, {"filters": [32, 64, 128, 256, 320], "head_filters": 16}),
        ({"filters": [8, 16, 32]}, {"strides": [[2, 2, 1], [2, 2, 2], [2, 2, 2]]}),
        ({"filters": [8, 16], "head_filters": 2}, {"head_filters": 2}),
        ({"fill_levels": "all", "share_encoder": True}, {"fill_levels": "all", "share_encoder": True}),
    ],
)
def test_overrides(overrides, expected):
    hparams = preset_hparams("lean", **overrides)
    for key, value in expected.items():
        assert hparams[key] == value, key
    assert "head_filters" not in preset_hparams("lean", filters=[8, 16])  # the network's default width then
    LCKDNet(**hparams)


def test_small_override_runs_forward():
    net = build_preset("lean", filters=[4, 8]).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 4, 8, 8, 4)).shape == (1, 3, 8, 8, 4)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("tiny",), {}, "unknown network preset"),
        (("lean", "UNet"), {}, "unknown network 'UNet'; registered"),
        (("lean",), {"depth": 3}, "unknown LCKDNet arguments"),
        (("lean", LCKDNet), {"restore_kernel_size": 3}, "unknown LCKDNet arguments"),
        (("lean",), {"filters": []}, "filters"),
    ],
)
def test_bad_arguments(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        preset_hparams(*args, **kwargs)


@pytest.mark.parametrize("network", [torch.nn.Linear, "not a class"])
def test_presets_build_missing_modality_networks_only(network):
    with pytest.raises((TypeError, ValueError)):
        build_preset("lean", network)


@pytest.mark.parametrize("method", PRESET_NETWORKS)
def test_2d_preset_for_another_modality_set(method):
    hparams = preset_hparams("lean_small", method, spatial_dims=2, in_modalities=3, in_channels=[3, 1, 1])
    assert hparams["strides"] == [[2, 2], [2, 2], [2, 2], [2, 2]] and hparams["head_filters"] == 8
    net = build_preset("lean_small", method, spatial_dims=2, in_modalities=3, in_channels=[3, 1, 1]).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 5, 32, 32)).shape == (1, 3, 32, 32)
