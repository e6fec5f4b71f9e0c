"""LCKDNet: shapes for the 15 subsets, sweep == separate forwards, batch 1 on 1x1x1, hparams, validation."""

from __future__ import annotations

import json

import pytest
import torch
from monai.data import MetaTensor

from lckd_med.constants import NUM_MODALITIES, NUM_REGIONS, SUBSET_NAMES, subset_to_mask
from lckd_med.networks.lckd_net import LCKDNet

FILTERS = (4, 8, 16)
SIZE = 16
ALL_MASKS = torch.tensor([subset_to_mask(s).tolist() for s in SUBSET_NAMES])  # (15, 4), canonical order


@pytest.fixture(scope="module", params=[False, True], ids=["separate", "shared"])
def net(request):
    torch.manual_seed(0)
    return LCKDNet(filters=FILTERS, share_encoder=request.param).train()


@pytest.fixture(scope="module")
def x():
    torch.manual_seed(1)
    return torch.randn(2, NUM_MODALITIES, SIZE, SIZE, SIZE)


def test_sweep_equals_separate_forwards_for_all_subsets(net, x):
    """forward(x with garbage in the missing channels, mask) == decode(encode(x_full), mask) == sweep slice."""
    with torch.no_grad():
        features = net.encode(x)
        sweep = net.decode_subsets(features, ALL_MASKS)
        assert sweep.shape == (2, len(SUBSET_NAMES), NUM_REGIONS, SIZE, SIZE, SIZE)
        for k, name in enumerate(SUBSET_NAMES):
            mask = ALL_MASKS[k].expand(2, -1)
            garbage = x.clone()
            garbage[:, ~ALL_MASKS[k]] = torch.randn_like(garbage[:, ~ALL_MASKS[k]]) * 7
            out = net(garbage, mask)
            assert out.shape == (2, NUM_REGIONS, SIZE, SIZE, SIZE), name
            torch.testing.assert_close(out, sweep[:, k], rtol=0, atol=1e-5, msg=name)
            if k in (0, 7, 14):
                torch.testing.assert_close(out, net.decode(features, mask), rtol=0, atol=1e-5, msg=name)


def test_sweep_chunking_does_not_change_result(net, x):
    with torch.no_grad():
        features = net.encode(x)
        full = net.decode_subsets(features, ALL_MASKS[:5])
        looped = net.decode_subsets(features, ALL_MASKS[:5], chunk_size=1)
        chunked = net.decode_subsets(features, ALL_MASKS[:5], chunk_size=2)
    torch.testing.assert_close(looped, full, rtol=0, atol=1e-5)
    torch.testing.assert_close(chunked, full, rtol=0, atol=1e-5)


def test_automatic_chunk_size_respects_voxel_budget(monkeypatch):
    net = LCKDNet(filters=(2, 2))
    features = net.encode(torch.randn(2, 4, 4, 4, 4))
    widths = []
    decode = net._decode
    monkeypatch.setattr(net, "_decode", lambda f, m, deep: widths.append(len(m)) or decode(f, m, deep))
    monkeypatch.setattr(net, "SUBSET_BATCH_VOXELS_CPU", 3 * 2 * 4**3)  # three masks of a (2, 4^3) batch per pass
    assert net.decode_subsets(features, ALL_MASKS).shape == (2, 15, 3, 4, 4, 4)
    assert widths == [3 * 2] * 5
    widths.clear()
    monkeypatch.setattr(net, "SUBSET_BATCH_VOXELS_CPU", 1)  # smaller than one window: plain loop
    net.decode_subsets(features, ALL_MASKS[:4])
    assert widths == [2] * 4


@pytest.mark.parametrize(
    ("attr", "device_type", "used"), [("SUBSET_BATCH_VOXELS_CPU", "cpu", True), ("SUBSET_BATCH_VOXELS", "cpu", False)]
)
def test_cpu_has_its_own_subset_budget(monkeypatch, attr, device_type, used):
    net = LCKDNet(filters=(2, 2))
    features = net.encode(torch.randn(1, 4, 4, 4, 4))
    widths = []
    decode = net._decode
    monkeypatch.setattr(net, "_decode", lambda f, m, deep: widths.append(len(m)) or decode(f, m, deep))
    monkeypatch.setattr(net, attr, 5 * 4**3)  # five masks of a (1, 4^3) batch per pass
    net.decode_subsets(features, ALL_MASKS)
    assert features[0].device.type == device_type
    assert widths == ([5] * 3 if used else [15])  # the CPU budget fits all 15 masks of a tiny window


def test_mixed_subset_batch_is_per_sample(net, x):
    masks = torch.tensor([[True, False, True, False], [False, False, False, True]])
    with torch.no_grad():
        batched = net(x, masks)
        for b in range(2):
            # batch size changes the CPU conv kernels, hence a float32 round-off tolerance
            torch.testing.assert_close(batched[b : b + 1], net(x[b : b + 1], masks[b]), rtol=1e-4, atol=1e-4)


def test_each_encoder_sees_only_its_channel(net, x):
    changed = x.clone()
    changed[:, 2] += 1.0
    with torch.no_grad():
        a, b = net.encode(x), net.encode(changed)
    for fa, fb in zip(a, b, strict=True):
        assert torch.equal(fa[:, [0, 1, 3]], fb[:, [0, 1, 3]])
        assert not torch.allclose(fa[:, 2], fb[:, 2])


def test_return_features_shapes_and_missing_are_zero(net, x):
    mask = torch.tensor([[True, True, False, False], [False, True, False, True]])
    with torch.no_grad():
        logits, features = net(x, mask, return_features=True)
    assert logits.shape == (2, NUM_REGIONS, SIZE, SIZE, SIZE)
    sizes = [SIZE, SIZE // 2, SIZE // 4]
    assert [tuple(f.shape) for f in features] == [
        (2, NUM_MODALITIES, c, s, s, s) for c, s in zip(FILTERS, sizes, strict=True)
    ]
    for f in features:
        assert torch.equal(f[~mask], torch.zeros_like(f[~mask]))
        assert f[mask].abs().sum() > 0


def test_batch_one_training_with_1x1x1_bottleneck(net):
    x = torch.randn(1, NUM_MODALITIES, 4, 4, 4)
    logits, features = net(x, torch.tensor([True, False, True, True]), return_features=True)
    assert features[-1].shape[-3:] == (1, 1, 1)
    logits.sum().backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    net.zero_grad(set_to_none=True)


def test_metatensor_input(net, x):
    with torch.no_grad():
        out = net(MetaTensor(x), ALL_MASKS[-1])
        torch.testing.assert_close(out, net(x), rtol=0, atol=1e-6)


def test_shared_encoder_has_one_parameter_set():
    separate = LCKDNet(filters=FILTERS)
    shared = LCKDNet(filters=FILTERS, share_encoder=True)
    assert len(separate.encoders) == NUM_MODALITIES and len(shared.encoders) == 1

    def count(module):
        return sum(p.numel() for p in module.parameters())

    assert count(separate) - count(shared) == (NUM_MODALITIES - 1) * count(shared.encoders[0])


def test_deep_supervision_outputs():
    net = LCKDNet(filters=(2, 4, 8, 8), deep_supervision=True).train()
    outs = net(torch.randn(1, NUM_MODALITIES, 8, 8, 8))
    assert [tuple(o.shape) for o in outs] == [(1, 3, 8, 8, 8), (1, 3, 4, 4, 4), (1, 3, 2, 2, 2)]
    with torch.no_grad():
        assert net.eval()(torch.randn(1, NUM_MODALITIES, 8, 8, 8)).shape == (1, 3, 8, 8, 8)


def test_defaults():
    net = LCKDNet()
    assert net.strides == ((1, 1, 1),) + ((2, 2, 2),) * 4
    assert net.size_divisor == (16, 16, 16)
    assert net.hparams["filters"] == [32, 64, 128, 256, 320]


def test_hparams_round_trip_through_json():
    net = LCKDNet(
        filters=(2, 4, 6),
        strides=(1, (2, 2, 1), 2),
        kernel_size=(3, 3, 1),
        share_encoder=True,
        deep_supervision=True,
        dropout=0.1,
        act=("prelu", {"init": 0.2}),
    )
    hparams = json.loads(json.dumps(net.hparams))
    assert hparams == net.hparams
    assert set(hparams) == LCKDNet.hparam_names()
    rebuilt = LCKDNet.from_hparams(hparams)
    assert rebuilt.hparams == net.hparams
    rebuilt.load_state_dict(net.state_dict())  # strict: same architecture
    x = torch.randn(1, NUM_MODALITIES, 4, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), net.eval()(x))


def test_from_hparams_rejects_unknown_key_and_non_mapping():
    with pytest.raises(ValueError, match="unknown LCKDNet hparams"):
        LCKDNet.from_hparams({"filters": [2, 4], "depth": 3})
    with pytest.raises(TypeError, match="mapping"):
        LCKDNet.from_hparams([("filters", [2, 4])])


@pytest.mark.parametrize(
    ("inp", "mask", "error", "match"),
    [
        (torch.randn(1, 4, 14, 16, 16), None, ValueError, r"size_divisor=\(4, 4, 4\)"),
        (torch.randn(1, 3, 16, 16, 16), None, ValueError, r"\(B, 4, H, W, D\)"),
        (torch.randn(4, 16, 16, 16), None, ValueError, r"\(B, 4, H, W, D\)"),
        (torch.randn(1, 4, 16, 16, 16), torch.zeros(1, 4, dtype=torch.bool), ValueError, "no available modality"),
        (torch.randn(1, 4, 16, 16, 16), torch.ones(1, 4), TypeError, "bool"),
        (torch.randn(2, 4, 16, 16, 16), torch.ones(3, 4, dtype=torch.bool), ValueError, "shape"),
    ],
)
def test_forward_bad_input(inp, mask, error, match):
    with pytest.raises(error, match=match):
        LCKDNet(filters=FILTERS)(inp, mask)


@pytest.mark.parametrize(
    ("masks", "chunk_size", "match"),
    [
        (ALL_MASKS.int(), None, "bool"),
        (ALL_MASKS[0], None, "bool"),
        (ALL_MASKS[:, :3], None, "shape"),
        (torch.zeros(0, 4, dtype=torch.bool), None, "shape"),
        (torch.tensor([[True, False, False, False], [False] * 4]), None, "at least one"),
        (ALL_MASKS, 0, "chunk_size"),
    ],
)
def test_decode_subsets_bad_input(masks, chunk_size, match):
    net = LCKDNet(filters=(2, 2))
    features = net.encode(torch.randn(1, 4, 2, 2, 2))
    with pytest.raises(ValueError, match=match):
        net.decode_subsets(features, masks, chunk_size=chunk_size)


def test_decode_bad_features():
    net = LCKDNet(filters=(2, 2))
    features = net.encode(torch.randn(1, 4, 2, 2, 2))
    with pytest.raises(ValueError, match="2 levels"):
        net.decode(features[:1], ALL_MASKS[-1])
    with pytest.raises(ValueError, match=r"features\[1\]"):
        net.decode([features[0], features[1][:, :3]], ALL_MASKS[-1])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"in_modalities": 0}, ValueError, "in_modalities"),
        ({"out_channels": 0}, ValueError, "out_channels"),
        ({"filters": (4,)}, ValueError, "at least 2 levels"),
        ({"filters": ()}, ValueError, "filters"),
        ({"filters": (4, -8)}, ValueError, "filters"),
        ({"filters": (4, 8), "strides": (1, 2, 2)}, ValueError, "strides"),
        ({"filters": (4, 8), "strides": (1, 0)}, ValueError, "strides"),
        ({"filters": (4, 8), "kernel_size": 4}, ValueError, "kernel_size"),
        ({"filters": (4, 8), "kernel_size": 1, "strides": (1, 3)}, ValueError, "too large"),
        ({"filters": (4, 8), "share_encoder": "yes"}, TypeError, "share_encoder"),
        ({"filters": (4, 8), "deep_supervision": 1}, TypeError, "deep_supervision"),
        ({"filters": (4, 8), "dropout": 1.5}, ValueError, "dropout"),
        ({"filters": (4, 8), "norm": 3}, TypeError, "norm"),
        ({"filters": (4, 8), "act": None}, TypeError, "act"),
        ({"filters": (4, 8), "norm": "nosuchnorm"}, ValueError, "nosuchnorm|NOSUCHNORM"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        LCKDNet(**kwargs)


# ---------------------------------------------------------------------------- fill_levels and the strided stem
def _reference_forward(net: LCKDNet, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The fill rule written out on an encoding of the zeroed input (no zero-feature cache, no substitution)."""
    zeroed = x * mask.view(1, -1, 1, 1, 1).to(x.dtype)
    feats = net.encode(zeroed)  # every channel encoded, zeros included, as the reference code does
    batch = x.shape[0]
    fused = []
    for level, (fusion, f) in enumerate(zip(net.fusions, feats, strict=True)):
        fill = net.fill_levels == "all" or level == net.num_levels - 1
        fused.append(fusion(f, mask.expand(batch, -1) if fill else torch.ones(batch, 4, dtype=torch.bool)))
    return net.decoder(fused, deep=False)


FILL_NETS = {
    "separate": {"filters": FILTERS},
    "shared": {"filters": FILTERS, "share_encoder": True},
    "stem": {"filters": FILTERS, "strides": ((2, 2, 1), 2, 2), "head_filters": 3},
}


@pytest.mark.parametrize("fill_levels", ["bottleneck", "all"])
@pytest.mark.parametrize("kind", list(FILL_NETS))
def test_sweep_equals_15_zeroed_forwards(kind, fill_levels, x):
    torch.manual_seed(0)
    net = LCKDNet(**FILL_NETS[kind], fill_levels=fill_levels).eval()
    with torch.no_grad():
        sweep = net.decode_subsets(net.encode(x), ALL_MASKS)
        for k, name in enumerate(SUBSET_NAMES):
            expected = _reference_forward(net, x, ALL_MASKS[k])
            torch.testing.assert_close(sweep[:, k], expected, rtol=0, atol=1e-5, msg=name)
            garbage = x.clone()
            garbage[:, ~ALL_MASKS[k]] = 5.0
            torch.testing.assert_close(net(garbage, ALL_MASKS[k]), expected, rtol=0, atol=1e-5, msg=name)


def test_fill_levels_default_is_the_reference_bottleneck_rule():
    assert LCKDNet().fill_levels == "bottleneck"
    assert LCKDNet().hparams["fill_levels"] == "bottleneck"


def test_fill_levels_differ_only_when_a_modality_is_missing(x):
    torch.manual_seed(0)
    a = LCKDNet(filters=FILTERS, fill_levels="bottleneck").eval()
    b = LCKDNet(filters=FILTERS, fill_levels="all").eval()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))
        assert not torch.allclose(a(x, ALL_MASKS[0]), b(x, ALL_MASKS[0]), atol=1e-4)


@pytest.mark.parametrize(("fill_levels", "gets_grad"), [("bottleneck", True), ("all", False)])
def test_missing_modality_encoder_trains_only_under_bottleneck(fill_levels, gets_grad, x):
    torch.manual_seed(0)
    net = LCKDNet(filters=FILTERS, fill_levels=fill_levels).train()
    net(x, torch.tensor([True, True, False, True])).sum().backward()
    grads = [p.grad for p in net.encoders[2].levels[0].parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads) == gets_grad


def test_zero_features_cache_follows_parameter_updates():
    torch.manual_seed(0)
    net = LCKDNet(filters=FILTERS).eval()
    with torch.no_grad():
        first = net.zero_features((8, 8, 8))
        assert net.zero_features((8, 8, 8)) is first
        expected = net.encode(torch.zeros(1, 4, 8, 8, 8))
        for f, e in zip(first, expected, strict=True):
            torch.testing.assert_close(f, e, rtol=0, atol=1e-6)
        net.encoders[1].levels[0].norm1.bias.add_(0.5)  # zero input: only biases matter
        second = net.zero_features((8, 8, 8))
    assert second is not first
    assert not torch.equal(second[0][:, 1], first[0][:, 1])
    assert net.zero_features((16, 8, 8))[0].shape[-3:] == (16, 8, 8)


def test_strided_stem_head_outputs_full_resolution(x):
    net = LCKDNet(filters=FILTERS, strides=((2, 2, 1), 2, 2), deep_supervision=True).train()
    assert net.head_filters == FILTERS[0] // 2
    assert net.size_divisor == (8, 8, 4)
    out = net(x)
    assert out[0].shape == (2, NUM_REGIONS, SIZE, SIZE, SIZE)
    assert out[1].shape == (2, NUM_REGIONS, SIZE // 4, SIZE // 4, SIZE // 2)


def test_hparams_without_fill_levels_load_as_all():
    hparams = LCKDNet(filters=(2, 4)).hparams
    del hparams["fill_levels"], hparams["head_filters"]
    assert LCKDNet.from_hparams(hparams).fill_levels == "all"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"fill_levels": "skips"}, ValueError, "fill_levels"),
        ({"fill_levels": None}, ValueError, "fill_levels"),
        ({"head_filters": 4}, ValueError, "strided stem"),
        ({"strides": ((2, 2, 1), 2), "head_filters": 0}, ValueError, "head_filters"),
        ({"strides": ((2, 2, 1), 2), "head_filters": 2.5}, ValueError, "head_filters"),
    ],
)
def test_bad_fill_and_head_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        LCKDNet(filters=(4, 8), **kwargs)


# ---------------------------------------------------------------------------- other modality sets (ModalitySpec)
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"in_channels": [3, 1]}, ValueError, "2 entries for in_modalities=4"),
        ({"in_channels": [3, 1, 1, 0]}, ValueError, "in_channels entries"),
        ({"in_channels": 3}, ValueError, "sequence of positive ints"),
        ({"in_channels": [3, 1, 1, 1], "share_encoder": True}, ValueError, "same channels"),
        ({"spatial_dims": 4}, ValueError, "spatial_dims"),
        ({"spatial_dims": 2, "strides": (1, (2, 2, 2))}, ValueError, r"strides\[1\].*2 positive ints"),
        ({"spatial_dims": 2, "kernel_size": (3, 3, 3)}, ValueError, "kernel_size.*2 of them"),
    ],
)
def test_bad_modality_layout_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        LCKDNet(filters=(4, 8), **kwargs)


def test_old_hparams_mean_one_channel_each_in_3d():
    hparams = LCKDNet(filters=(2, 4)).hparams
    assert hparams["in_channels"] == [1] * NUM_MODALITIES and hparams["spatial_dims"] == 3
    del hparams["in_channels"], hparams["spatial_dims"]
    assert LCKDNet.complete_hparams(hparams) == LCKDNet(filters=(2, 4)).hparams
    assert LCKDNet.from_hparams(hparams).hparams == LCKDNet(filters=(2, 4)).hparams


@pytest.mark.parametrize("share_encoder", [False, True])
def test_2d_multichannel_network_reads_each_modality_s_own_channels(share_encoder):
    """In 2-D with 2 channels per modality (shared encoder) or 3 + 1 (own encoders): changing one modality's channels
    changes only that modality's features, and a missing modality's channels are never read."""
    channels = [2, 2] if share_encoder else [3, 1]
    torch.manual_seed(0)
    net = LCKDNet(in_modalities=2, in_channels=channels, spatial_dims=2, filters=(4, 8), share_encoder=share_encoder)
    net.eval()
    x = torch.randn(2, sum(channels), 8, 8)
    y = x.clone()
    y[:, channels[0] :] = torch.randn(2, channels[1], 8, 8)  # only the second modality changes
    with torch.no_grad():
        fx, fy = net.encode(x), net.encode(y)
        assert all(
            torch.equal(a[:, 0], b[:, 0]) and not torch.equal(a[:, 1], b[:, 1]) for a, b in zip(fx, fy, strict=True)
        )
        first_only = torch.tensor([True, False])
        assert torch.equal(net(x, first_only), net(y, first_only))
        assert net(x).shape == (2, NUM_REGIONS, 8, 8)
        assert net.size_divisor == (2, 2)
