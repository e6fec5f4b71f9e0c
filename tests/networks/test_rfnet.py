"""RFNet: published size, shapes, exactness under the encode-once sweep, training outputs, hparams, validation."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lckd_med.constants import NUM_MODALITIES, SUBSET_NAMES, subset_to_mask
from lckd_med.networks import SegmentationNetwork
from lckd_med.networks.rfnet import PUBLISHED_RECIPE, RFNET_FILTERS, RFNet, RFNetOutput, recipe_to_json

TINY = {"filters": (4, 8, 12, 16), "fusion_hidden": 8, "region_hidden": 4}
SIZE = 16
CLASSES = 4
ALL_MASKS = torch.tensor([subset_to_mask(s).tolist() for s in SUBSET_NAMES])  # (15, 4), canonical order


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return RFNet(**TINY).eval()


@pytest.fixture(scope="module")
def x():
    torch.manual_seed(1)
    return torch.randn(2, NUM_MODALITIES, SIZE, SIZE, SIZE)


# Exactness checks run in float64: in float32 a different batch composition (the sweep decodes masks together) moves
# the logits by ~3e-5 (convolution kernels chosen per batch size, amplified by the instance norms); in float64 the
# two agree to round-off, so a real dependence on a missing channel would show.
EXACT = {"rtol": 0.0, "atol": 1e-10}


@pytest.fixture(scope="module")
def pair64(net, x):
    model = RFNet(**TINY).double().eval()
    model.load_state_dict(net.state_dict())
    return model, x.double()


def test_published_size():
    """The default network is the published one: 8,984,960 parameters in 288 tensors, no buffers."""
    full = RFNet()
    assert full.filters == RFNET_FILTERS == (16, 32, 64, 128)
    assert sum(p.numel() for p in full.parameters()) == 8_984_960
    assert len(full.state_dict()) == 288
    assert not list(full.buffers())


def test_published_initialisation():
    """Kaiming-normal weights (fan in, gain sqrt(2)) on every convolution and modality-weight layer."""
    torch.manual_seed(0)
    full = RFNet()
    for weight in (full.encoders[0].stages[3].res[0].conv.weight, full.fusions[3].modality_weights[0][0].weight):
        fan_in = math.prod(weight.shape[1:])
        assert weight.std().item() == pytest.approx(math.sqrt(2.0 / fan_in), rel=0.05)


def test_protocol_and_shapes(net, x):
    assert isinstance(net, SegmentationNetwork)
    assert (net.in_modalities, net.in_channels, net.spatial_dims, net.out_channels) == (4, (1, 1, 1, 1), 3, 4)
    assert net.size_divisor == (8, 8, 8)
    with torch.no_grad():
        features = net.encode(x)
        logits = net(x, ALL_MASKS[-1])
    for level, (f, c) in enumerate(zip(features, TINY["filters"], strict=True)):
        assert f.shape == (2, NUM_MODALITIES, c, *(SIZE // 2**level,) * 3)
    assert logits.shape == (2, CLASSES, SIZE, SIZE, SIZE)
    # logits, not probabilities (the published model returns softmax probabilities)
    assert not torch.allclose(logits.sum(dim=1), torch.ones(1))


def test_masked_encode_leaves_missing_slots_zero(pair64):
    net, x = pair64
    mask = torch.tensor([[True, False, True, False], [False, False, False, True]])
    with torch.no_grad():
        full = net.encode(x)
        part = net.encode(x, mask)
    for f, p in zip(full, part, strict=True):
        torch.testing.assert_close(p[mask], f[mask], **EXACT)
        assert not p[~mask].any()


def test_sweep_equals_separate_forwards_for_all_subsets(pair64):
    """forward(x with garbage in the missing channels, mask) == decode_subsets slice, for all 15 subsets."""
    net, x = pair64
    with torch.no_grad():
        features = net.encode(x)
        sweep = net.decode_subsets(features, ALL_MASKS)
        assert sweep.shape == (2, len(SUBSET_NAMES), CLASSES, SIZE, SIZE, SIZE)
        for k, name in enumerate(SUBSET_NAMES):
            garbage = x.clone()
            garbage[:, ~ALL_MASKS[k]] = torch.randn_like(garbage[:, ~ALL_MASKS[k]]) * 7
            out = net(garbage, ALL_MASKS[k].expand(2, -1))
            torch.testing.assert_close(out, sweep[:, k], **EXACT, msg=name)
        # decode ignores whatever the features of a missing modality hold
        noisy = [f + torch.randn_like(f) * 3 * (~ALL_MASKS[0]).view(1, -1, *([1] * (f.dim() - 2))) for f in features]
        torch.testing.assert_close(net.decode(noisy, ALL_MASKS[0]), sweep[:, 0], **EXACT)


def test_decode_subsets_chunks_and_per_sample_masks(pair64):
    net, x = pair64
    with torch.no_grad():
        features = net.encode(x)
        one = net.decode_subsets(features, ALL_MASKS[:5], chunk_size=1)
        five = net.decode_subsets(features, ALL_MASKS[:5], chunk_size=5)
        torch.testing.assert_close(one, five, **EXACT)
        mixed = net(x, torch.stack((ALL_MASKS[1], ALL_MASKS[9])))
    torch.testing.assert_close(mixed[0], one[0, 1], **EXACT)
    torch.testing.assert_close(mixed[1], net.decode_subsets(features, ALL_MASKS[9:10])[1, 0], **EXACT)


def test_training_outputs(net, x):
    """return_aux: separate decoders on every modality alone (whatever the mask), region maps at full size."""
    mask = torch.tensor([True, False, False, True])
    with torch.no_grad():
        out = net(x, mask, return_aux=True)
        features = net.encode(x)
        alone = net.separate_decoder([f[:, 2] for f in features])
        other = net(x, torch.tensor([False, True, False, False]), return_aux=True)
    assert isinstance(out, RFNetOutput)
    torch.testing.assert_close(out.logits, net(x, mask), rtol=0, atol=1e-5)
    assert len(out.sep_logits) == NUM_MODALITIES and len(out.region_probs) == len(TINY["filters"])
    torch.testing.assert_close(out.sep_logits[2], alone, rtol=0, atol=1e-5)  # batch folding changes nothing
    for a, b in zip(out.sep_logits, other.sep_logits, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for probs in out.region_probs:
        assert probs.shape == (2, CLASSES, SIZE, SIZE, SIZE)
        torch.testing.assert_close(probs.sum(dim=1), torch.ones(2, SIZE, SIZE, SIZE))


def test_region_maps_are_detached_from_the_fused_output(x):
    """As published, the fusion reads the region maps detached: the fused loss never trains the region heads."""
    torch.manual_seed(3)
    model = RFNet(**TINY)
    out = model(x[:1], return_aux=True)
    out.logits.sum().backward()
    assert all(p.grad is None for p in model.region_maps.parameters())
    assert all(p.grad is None for p in model.separate_decoder.parameters())
    assert model.fusions[0].modality_weights[0][0].weight.grad is not None
    model.zero_grad(set_to_none=True)
    out = model(x[:1], return_aux=True)
    sum(p.sum() for p in out.region_probs).backward()
    assert model.region_maps[0].classify[1].weight.grad is not None


def test_variants_2d_and_multichannel():
    torch.manual_seed(0)
    flat = RFNet(**TINY, spatial_dims=2)
    assert flat(torch.randn(1, 4, 16, 32), torch.tensor([False, True, True, False])).shape == (1, CLASSES, 16, 32)
    multi = RFNet(filters=(4, 8), fusion_hidden=4, region_hidden=4, in_modalities=2, in_channels=(2, 1), out_channels=3)
    out = multi(torch.randn(1, 3, 4, 4, 8), torch.tensor([True, False]), return_aux=True)
    assert out.logits.shape == (1, 3, 4, 4, 8) and len(out.sep_logits) == 2 and len(out.region_probs) == 2


def test_hparams_round_trip():
    model = RFNet(**TINY, in_channels=(1, 2, 1, 1))
    hparams = json.loads(json.dumps(model.hparams))
    again = RFNet.from_hparams(hparams)
    assert again.hparams == model.hparams
    assert again.state_dict().keys() == model.state_dict().keys()
    assert RFNet.from_hparams({}).hparams == RFNet().hparams
    with pytest.raises(ValueError, match="unknown RFNet hparams"):
        RFNet.from_hparams({**hparams, "dropout": 0.1})
    with pytest.raises(TypeError, match="mapping"):
        RFNet.from_hparams([("filters", [4, 8])])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"in_modalities": 0}, "in_modalities"),
        ({"in_modalities": True}, "in_modalities"),
        ({"out_channels": 1}, "out_channels"),
        ({"out_channels": 2.0}, "out_channels"),
        ({"filters": (16,)}, "at least 2 levels"),
        ({"filters": (16, 31)}, "even ints >= 4"),
        ({"filters": (2, 4)}, "even ints >= 4"),
        ({"filters": "16,32"}, "filters"),
        ({"fusion_hidden": 0}, "fusion_hidden"),
        ({"region_hidden": -1}, "region_hidden"),
        ({"in_channels": (1, 1)}, "in_channels"),
        ({"in_channels": (1, 0, 1, 1)}, "in_channels"),
        ({"spatial_dims": 4}, "spatial_dims"),
    ],
)
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RFNet(**{**TINY, **kwargs})


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((1, 3, 16, 16, 16), r"input must be \(B, 4"),
        ((1, 4, 16, 16), r"input must be \(B, 4"),
        ((1, 4, 16, 16, 20), "multiples of 8"),
        ((1, 4, 16, 16, 8), "at least 16"),
    ],
)
def test_input_validation(net, shape, match):
    with pytest.raises(ValueError, match=match):
        net(torch.zeros(shape))


def test_mask_and_feature_validation(net, x):
    with pytest.raises(TypeError, match="torch.bool"):
        net(x, torch.ones(2, 4))
    with pytest.raises(ValueError, match="no available modality"):
        net(x, torch.tensor([[True, False, False, False], [False, False, False, False]]))
    features = net.encode(x)
    with pytest.raises(ValueError, match="features must be a list of 4"):
        net.decode(features[:3], ALL_MASKS[-1])
    with pytest.raises(ValueError, match=r"features\[1\]"):
        net.decode([features[0], features[2], *features[2:]], ALL_MASKS[-1])
    with pytest.raises(ValueError, match="at least one available"):
        net.decode_subsets(features, torch.zeros(1, 4, dtype=torch.bool))


def test_published_recipe_is_frozen_and_json():
    recipe = recipe_to_json(PUBLISHED_RECIPE)
    assert json.loads(json.dumps(recipe)) == recipe
    assert recipe["modalities"] == ["flair", "t1ce", "t1", "t2"]
    assert recipe["class_labels"] == [0, 1, 2, 4]
    assert recipe["inference"]["window"] == [80, 80, 80] and recipe["inference"]["stride"] == [40, 40, 40]
    assert recipe["source"]["commit"].startswith("1e475fa")
    with pytest.raises(TypeError):
        PUBLISHED_RECIPE["modalities"] = ()  # type: ignore[index]
