"""The published-checkpoint key mapping, proven against the published model's own outputs.

``tests/fixtures/mmformer/manifest.json`` lists the state dict that YaoZhang93/mmFormer's ``train.py`` saves
(names, shapes, dtypes, in order); ``outputs.json`` holds what the published model returned for
:func:`~tests.networks.mmformer_fixture.fixture_input` with the seeded weights of
:func:`~tests.networks.mmformer_fixture.published_state_dict` (run once outside this repository). Here the same
state dict is converted, loaded strictly into :class:`MMFormerNet` and must give the same outputs.

The reproduction runs at the published size (128^3, 36.4 M parameters): one encoding, one decode per fixture
mask, one auxiliary decode; about 17 s of CPU time on one thread (measured: encoding 4.7 s, each decode 3.3 s,
the auxiliary decode 1.9 s).
"""

from __future__ import annotations

import pytest
import torch

from lckd_med.constants import MODALITIES
from lckd_med.networks.mmformer import MMFormerNet
from lckd_med.networks.mmformer_import import (
    UNUSED_PUBLISHED_KEYS,
    mmformer_state_dict_from_published,
    published_key_map,
)
from tests.networks.mmformer_fixture import (
    fixture_input,
    load_manifest,
    load_outputs,
    published_state_dict,
)

pytestmark = pytest.mark.usefixtures("one_thread")

#: our logits against the published ones (float32, op order differs: attention kernel, concatenation layout)
LOGIT_ATOL = 1e-4
#: voxels whose argmax may flip between the two (ties at float round-off), per class, out of 128^3
HISTOGRAM_ATOL = 16


@pytest.fixture(scope="module")
def manifest() -> dict:
    return load_manifest()


@pytest.fixture(scope="module")
def published(manifest) -> dict[str, torch.Tensor]:
    return published_state_dict(manifest)


def meta_state_shapes() -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in MMFormerNet().state_dict().items()}


def test_manifest_is_the_published_training_file(manifest):
    assert manifest["source"]["commit"] == "b18663adbfd0323656083e0470420c8c715c1782"
    assert manifest["file_keys"] == ["epoch", "state_dict", "optim_dict"]
    assert manifest["num_tensors"] == len(manifest["keys"]) == 287
    assert manifest["num_parameters"] == 36_654_416
    assert all(k.startswith("module.") for k, _, _ in manifest["keys"])


def test_every_published_key_has_one_counterpart(manifest):
    ours = meta_state_shapes()
    mapped = {}
    for key, shape, _ in manifest["keys"]:
        bare = key.removeprefix("module.")
        target = published_key_map(bare)
        if UNUSED_PUBLISHED_KEYS.match(bare):
            assert key in manifest["unused_in_forward"]
            continue
        assert target in ours, key
        assert ours[target] == tuple(shape), key
        mapped[target] = key
    assert set(mapped) == set(ours)  # a bijection: nothing of ours left without a published tensor
    assert len(manifest["unused_in_forward"]) == 8


def test_per_modality_parts_go_to_our_modality_order():
    for published_index, name in enumerate(("flair", "t1ce", "t1", "t2")):
        ours = MODALITIES.index(name)
        assert published_key_map(f"{name}_pos") == f"encoders.{ours}.pos_embedding"
        assert published_key_map(f"{name}_encoder.e3_c2.conv.weight") == f"encoders.{ours}.stages.2.body.0.conv.weight"
        assert published_index == (0, 2, 1, 3)[ours]


@pytest.mark.parametrize("wrap", ["file", "bare", "unprefixed", "unprefixed_file"])
def test_accepts_what_torch_load_returns(published, wrap):
    state = {k.removeprefix("module."): v for k, v in published.items()} if "unprefixed" in wrap else published
    obj = {"epoch": 999, "state_dict": state, "optim_dict": {"state": {}}} if "file" in wrap else state
    out = mmformer_state_dict_from_published(obj)
    assert set(out) == set(meta_state_shapes())
    assert out["encoders.2.pos_embedding"] is published["module.t1ce_pos"]  # renamed, not copied


def _without(state: dict, key: str) -> dict:
    return {k: v for k, v in state.items() if k != key}


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda s: {**s, "module.extra.weight": torch.zeros(1)}, "unexpected key 'module.extra.weight'"),
        (lambda s: {**s, "module.t1_transformer.cross_ffn_list.0.fn.fn.net.6.weight": torch.zeros(1)}, "unexpected"),
        (lambda s: _without(s, "module.t2_encoder.e4_c3.conv.bias"), "encoders.3.stages.3.body.1.conv.bias"),
        (lambda s: _without(s, "module.t1_decode_conv.weight"), "lacks key 'module.t1_decode_conv.weight'"),
        (lambda s: {**s, "module.t1_pos": torch.zeros(1, 8, 512)}, r"'module.t1_pos' has shape \(1, 8, 512\)"),
        (lambda s: {**s, "module.t1_decode_conv.bias": torch.zeros(3)}, "'module.t1_decode_conv.bias' has shape"),
        (lambda s: {**s, "module.t2_pos": "weights"}, "'module.t2_pos' holds a str"),
        (lambda s: {**s, "flair_pos": torch.zeros(1, 512, 512)}, "mixes 'module.'-prefixed and bare keys"),
        (lambda s: [1, 2], "not an mmFormer checkpoint"),
        (lambda s: {}, "not an mmFormer checkpoint"),
    ],
)
def test_refuses_with_one_line_naming_the_key(published, edit, match):
    with pytest.raises(ValueError, match=match) as info:
        mmformer_state_dict_from_published(edit(dict(published)))
    assert "\n" not in str(info.value)


def test_checks_shapes_against_the_target_network_and_its_fusion_order(published):
    with pytest.raises(ValueError, match=r"img_size=\[64, 64, 64\]"):
        mmformer_state_dict_from_published(published, {**MMFormerNet().hparams, "img_size": 64})
    with pytest.raises(ValueError, match="fusion_order"):
        mmformer_state_dict_from_published(published, {**MMFormerNet().hparams, "fusion_order": [0, 1, 2, 3]})


@pytest.fixture(scope="module")
def converted(published):
    """The converted network and its encoding of the fixture input (every modality), at the published size."""
    net = MMFormerNet().eval()
    net.load_state_dict(mmformer_state_dict_from_published({"state_dict": published}), strict=True)
    with torch.no_grad():
        features = net.encode(fixture_input(MODALITIES))
    return net, features


def _at(volume: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``(C, H, W, D)`` -> ``(P, C)`` at ``positions (P, 3)``."""
    return volume[:, positions[:, 0], positions[:, 1], positions[:, 2]].T


@pytest.mark.parametrize("mask_name", ["all", "t1ce", "t1+t2"])
def test_reproduces_the_published_outputs(converted, mask_name):
    net, features = converted
    fixture = load_outputs()
    expected = fixture["eval"][mask_name]
    positions = torch.tensor(fixture["positions"])
    mask = torch.tensor([name in expected["available"] for name in MODALITIES])
    with torch.no_grad():
        logits, deep = (
            net.decode(features, mask, return_deep=True) if mask_name == "all" else (net.decode(features, mask), [])
        )
    probs = logits[0].softmax(0)
    torch.testing.assert_close(_at(logits[0], positions), torch.tensor(expected["logits"]), rtol=0, atol=LOGIT_ATOL)
    torch.testing.assert_close(probs.mean((1, 2, 3)), torch.tensor(expected["prob_mean"]), rtol=0, atol=1e-5)
    histogram = torch.bincount(logits[0].argmax(0).flatten(), minlength=4)
    assert (histogram - torch.tensor(expected["label_histogram"])).abs().max() <= HISTOGRAM_ATOL
    if deep:  # the deep-supervision probabilities of the published training mode (mask: all)
        train = fixture["train_mode"]
        near = positions[: train["num_positions"]]
        for ours, theirs in zip(deep, train["deep_prob"], strict=True):
            torch.testing.assert_close(_at(ours[0], near), torch.tensor(theirs), rtol=0, atol=1e-5)


def test_reproduces_the_published_auxiliary_prediction(converted):
    """The auxiliary decoder is shared by the modalities: one of them (t1ce, whose index differs) proves it."""
    net, features = converted
    train = load_outputs()["train_mode"]
    near = torch.tensor(load_outputs()["positions"][: train["num_positions"]])
    with torch.no_grad():
        aux = net.decode_aux(features, [MODALITIES.index("t1ce")])[0, 0].softmax(0)
    torch.testing.assert_close(_at(aux, near), torch.tensor(train["sep_prob"]["t1ce"]), rtol=0, atol=1e-5)
