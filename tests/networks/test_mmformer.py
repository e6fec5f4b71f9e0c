"""MMFormerNet: the protocol, exactness under the encode-once sweep, training outputs, hparams, validation.

A tiny variant (32^3 window, narrow) for speed; the published size is only built on the meta device (counts).
Equality with the published model itself is pinned in ``test_mmformer_import.py``.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from lckd_med.constants import MODALITIES
from lckd_med.networks import SegmentationNetwork
from lckd_med.networks.mmformer import PUBLISHED_FUSION_ORDER, MMFormerNet, MMFormerOutput
from tests.networks.mmformer_fixture import load_manifest

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"img_size": 32, "base_filters": 2, "embed_dim": 8, "mlp_dim": 16, "num_heads": 2}
MASK = torch.tensor([[True, False, True, False], [False, True, False, False]])


def tiny(seed: int = 0, **kwargs) -> MMFormerNet:
    torch.manual_seed(seed)
    return MMFormerNet(**{**TINY, **kwargs})


@pytest.fixture(scope="module")
def net() -> MMFormerNet:
    return tiny().eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 4, 32, 32, 32, generator=torch.Generator().manual_seed(1))


def test_protocol_and_shapes(net, x):
    assert isinstance(net, SegmentationNetwork)
    assert (net.in_modalities, net.in_channels, net.spatial_dims, net.out_channels) == (4, (1,) * 4, 3, 4)
    assert net.size_divisor == (32, 32, 32)
    with torch.no_grad():
        features = net.encode(x)
        logits = net(x, MASK)
    assert [tuple(f.shape) for f in features] == [
        (2, 4, 2, 32, 32, 32),
        (2, 4, 4, 16, 16, 16),
        (2, 4, 8, 8, 8, 8),
        (2, 4, 16, 4, 4, 4),
        (2, 4, 32, 2, 2, 2),
        (2, 4, 8, 2, 2, 2),  # the intra-modal transformer output
    ]
    assert logits.shape == (2, 4, 32, 32, 32)


def test_forward_equals_decode_of_full_encoding_whatever_missing_channels_hold(net, x):
    """Exact under the encode-once sweep: missing modalities' features are zeroed, not combined."""
    garbage = x.clone()
    garbage[0, 1] = float("nan")
    garbage[0, 3] = 1e6
    garbage[1, 0] = float("inf")
    with torch.no_grad():
        for b in range(2):  # batch 1: the same arithmetic, bit for bit
            ref = net(x[b : b + 1], MASK[b])
            assert torch.equal(net(garbage[b : b + 1], MASK[b]), ref)
            assert torch.equal(net.decode(net.encode(garbage[b : b + 1]), MASK[b]), ref)
        # a batch of 2 encodes each modality on the samples that have it: equal up to float round-off
        torch.testing.assert_close(net.decode(net.encode(garbage), MASK), net(x, MASK), rtol=1e-4, atol=1e-3)


def test_a_missing_modality_still_enters_through_its_position_embedding(x):
    """Published behaviour: masked tokens are zero + position embedding, and they take part in attention."""
    net = tiny().eval()
    with torch.no_grad():
        before = net(x[:1], MASK[0])
        net.encoders[1].pos_embedding.add_(1.0)  # t1: missing in MASK[0]
        assert not torch.allclose(net(x[:1], MASK[0]), before)


def test_decode_subsets_equals_per_mask_decode(net, x):
    masks = torch.tensor([[True, True, True, True], [False, False, True, False], [False, True, False, True]])
    with torch.no_grad():
        features = net.encode(x)
        for chunk in (1, 2, None):
            out = net.decode_subsets(features, masks, chunk_size=chunk)
            assert out.shape == (2, 3, 4, 32, 32, 32)
            for k in range(3):
                torch.testing.assert_close(out[:, k], net.decode(features, masks[k]), rtol=1e-5, atol=1e-5)


def test_training_outputs(x):
    net = tiny().train()
    out = net(x, MASK, return_aux=True)
    assert isinstance(out, MMFormerOutput)
    assert out.logits.shape == (2, 4, 32, 32, 32)
    assert out.aux_logits.shape == (2, 4, 4, 32, 32, 32)  # every modality, whatever the mask
    assert [tuple(p.shape) for p in out.deep_probs] == [(2, 4, 32, 32, 32)] * 4
    for p in out.deep_probs:
        torch.testing.assert_close(p.sum(1), torch.ones(2, 32, 32, 32))
    loss = out.logits.square().mean() + out.aux_logits.square().mean() + sum(p.square().mean() for p in out.deep_probs)
    loss.backward()
    assert [n for n, p in net.named_parameters() if p.grad is None] == []  # no dead parameters


def test_aux_logits_ignore_the_mask_and_match_decode_aux(x):
    net = tiny().eval()
    with torch.no_grad():
        aux = net(x, MASK, return_aux=True).aux_logits
        torch.testing.assert_close(aux, net(x, torch.ones_like(MASK), return_aux=True).aux_logits)
        torch.testing.assert_close(aux[:, 2:3], net.decode_aux(net.encode(x), [2]))


def test_dropout_only_in_training(x):
    net = tiny(dropout=0.5)
    with torch.no_grad():
        net.eval()
        assert torch.equal(net(x, MASK), net(x, MASK))
        net.train()
        assert not torch.equal(net(x, MASK), net(x, MASK))


def test_fusion_order_matters_and_defaults_to_the_published_order(x):
    assert tiny().fusion_order == PUBLISHED_FUSION_ORDER == (0, 2, 1, 3)
    assert tuple(MODALITIES[i] for i in PUBLISHED_FUSION_ORDER) == ("flair", "t1ce", "t1", "t2")
    assert tiny(in_modalities=3).fusion_order == (0, 1, 2)
    with torch.no_grad():
        a = tiny(fusion_order=[0, 2, 1, 3]).eval()(x)
        b = tiny(fusion_order=[0, 1, 2, 3]).eval()(x)  # same weights, other concatenation order
    assert not torch.allclose(a, b)


def test_published_initialisation():
    net = tiny()
    assert all(bool((e.pos_embedding == 0).all()) for e in net.encoders)
    std = net.encoders[0].stages[2].body[0].conv.weight.std().item()
    assert std == pytest.approx(math.sqrt(2 / (8 * 27)), rel=0.15)  # Kaiming normal, fan-in, gain sqrt(2)


def test_parameter_count_is_the_published_one_less_the_unused_convolutions():
    manifest = load_manifest()
    with torch.device("meta"):
        net = MMFormerNet()
    shapes = {k: s for k, s, _ in manifest["keys"]}
    unused = sum(math.prod(shapes[k]) for k in manifest["unused_in_forward"])
    assert sum(p.numel() for p in net.parameters()) == manifest["num_parameters"] - unused == 36_391_760
    assert len(net.state_dict()) == manifest["num_tensors"] - len(manifest["unused_in_forward"])


def test_hparams_round_trip():
    net = tiny(in_channels=[1, 2, 1, 1], fusion_order=[3, 2, 1, 0], depth=2, dropout=0.0)
    hparams = json.loads(json.dumps(net.hparams))
    again = MMFormerNet.from_hparams(hparams)
    assert again.hparams == net.hparams
    assert again.state_dict().keys() == net.state_dict().keys()
    assert MMFormerNet().hparams == {
        "in_modalities": 4,
        "in_channels": [1, 1, 1, 1],
        "out_channels": 4,
        "img_size": [128, 128, 128],
        "base_filters": 8,
        "embed_dim": 512,
        "mlp_dim": 4096,
        "num_heads": 8,
        "depth": 1,
        "dropout": 0.1,
        "fusion_order": [0, 2, 1, 3],
    }
    with pytest.raises(ValueError, match="unknown MMFormerNet hparams"):
        MMFormerNet.from_hparams({**hparams, "filters": [1]})
    with pytest.raises(TypeError, match="mapping"):
        MMFormerNet.from_hparams([("img_size", 32)])


def test_multichannel_modalities():
    net = tiny(in_channels=[1, 2, 1, 1]).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 5, 32, 32, 32)).shape == (1, 4, 32, 32, 32)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"in_modalities": 0}, "in_modalities"),
        ({"in_modalities": True}, "in_modalities"),
        ({"in_channels": [1, 1]}, "in_channels"),
        ({"in_channels": [1, 0, 1, 1]}, "in_channels"),
        ({"out_channels": 0}, "out_channels"),
        ({"img_size": 48 + 8}, "img_size"),
        ({"img_size": 16}, "img_size"),
        ({"img_size": [32, 32]}, "img_size"),
        ({"img_size": "32"}, "img_size"),
        ({"base_filters": 0}, "base_filters"),
        ({"embed_dim": 0}, "embed_dim"),
        ({"mlp_dim": -1}, "mlp_dim"),
        ({"num_heads": 0}, "num_heads"),
        ({"num_heads": 3}, "divisible by num_heads"),
        ({"depth": 0}, "depth"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": "0.1"}, "dropout"),
        ({"fusion_order": [0, 1, 2]}, "fusion_order"),
        ({"fusion_order": [0, 1, 1, 2]}, "fusion_order"),
        ({"fusion_order": "0123"}, "fusion_order"),
    ],
)
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MMFormerNet(**{**TINY, **kwargs})


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((1, 4, 64, 64, 64), "position embeddings fix the window to \\(32, 32, 32\\)"),
        ((1, 4, 32, 32, 16), "position embeddings"),
        ((1, 3, 32, 32, 32), "input must be"),
        ((4, 32, 32, 32), "input must be"),
    ],
)
def test_window_size_is_enforced(net, shape, match):
    with pytest.raises(ValueError, match=match):
        net(torch.zeros(shape))
    if len(shape) == 5 and shape[1] == 4:
        with pytest.raises(ValueError, match=match):
            net.encode(torch.zeros(shape))


def test_bad_masks_and_features(net, x):
    with torch.no_grad():
        features = net.encode(x)
        with pytest.raises(ValueError, match="no available modality"):
            net.decode(features, torch.zeros(4, dtype=torch.bool))
        with pytest.raises(TypeError, match="torch.bool"):
            net(x, MASK.int())
        with pytest.raises(ValueError, match="features must be a list of 6"):
            net.decode(features[:5], MASK)
        with pytest.raises(ValueError, match=r"features\[5\]"):
            net.decode([*features[:5], features[5][:, :, :4]], MASK)
        with pytest.raises(ValueError, match="at least one available"):
            net.decode_subsets(features, torch.tensor([[True, False, False, False], [False] * 4]))
        with pytest.raises(ValueError, match="masks must"):
            net.decode_subsets(features, torch.ones(2, 3, dtype=torch.bool))
