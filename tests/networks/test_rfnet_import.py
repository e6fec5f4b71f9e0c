"""The published RFNet checkpoint format -> RFNet: the committed manifest and output fixture are reproduced.

Fixtures (``tests/fixtures/rfnet/``, facts measured by running the published code of dyh127/RFNet at ``1e475fa``
outside this repository, see each file's header):

* ``published_manifest.json``: every key, shape and dtype of the published state dict, in order, as train.py saves
  it (``{'epoch', 'state_dict', 'optim_dict'}`` of a DataParallel model, ``module.`` prefixes).
* ``published_outputs.json``: the published model's softmax outputs with weights from :func:`published_tensor` on
  the input of :func:`published_input`, in eval mode (two masks) and train mode (fused, separate, region maps).

The test rebuilds the published weights from the manifest with the same generator, converts them, loads them
strictly into :class:`RFNet` and compares. Tolerance: probabilities within ``1e-4`` relative + ``1e-5`` absolute
(measured differences are ~1e-6: float32 summation order; the fixture keeps 7 significant digits).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lckd_med.constants import MODALITIES
from lckd_med.networks.rfnet import RFNet
from lckd_med.networks.rfnet_import import (
    PUBLISHED_MODALITIES,
    published_key_map,
    rfnet_hparams_from_published,
    rfnet_state_dict_from_published,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "rfnet"
MANIFEST = json.loads((FIXTURES / "published_manifest.json").read_text())
OUTPUTS = json.loads((FIXTURES / "published_outputs.json").read_text())
COMMIT = "1e475fa5de4ac3f41f8de3d3102bb8b28383c2c4"
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


def published_tensor(index: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Tensor ``index`` of the manifest: a sine hash (no RNG, so any torch version gives the same values),
    uniform with std ``1 / sqrt(fan_in)`` for weights and 0.1 for biases."""
    u = torch.sin(torch.arange(math.prod(shape), dtype=torch.float64) * 12.9898 + (index + 1) * 78.233) * 43758.5453
    u = u - torch.floor(u)
    scale = 1.0 / math.sqrt(math.prod(shape[1:])) if len(shape) >= 2 else 0.1
    return ((2.0 * u - 1.0) * math.sqrt(3.0) * scale).reshape(shape).float()


def published_input(size: int) -> torch.Tensor:
    """``(1, 4, n, n, n)`` in the published channel order (flair, t1ce, t1, t2): smooth waves plus a bright blob."""
    axis = torch.arange(size, dtype=torch.float64)
    i, j, k = torch.meshgrid(axis, axis, axis, indexing="ij")
    half = (size - 1) / 2
    blob = torch.exp(-((i - 0.8 * half) ** 2 + (j - 1.1 * half) ** 2 + (k - half) ** 2) / (0.25 * size) ** 2)
    channels = [
        torch.sin(0.31 * i + 0.7 * c) * torch.cos(0.23 * j - 0.4 * c)
        + 0.5 * torch.sin(0.17 * k * (c + 1) + 0.3 * i)
        + (1.5 - 0.5 * c) * blob
        for c in range(4)
    ]
    return torch.stack(channels)[None].float()


def published_checkpoint() -> dict:
    """What ``torch.load`` would return for a published file holding the generator's weights."""
    state = {key: published_tensor(i, tuple(shape)) for i, (key, shape, _) in enumerate(MANIFEST["keys"])}
    return {"epoch": 299, "state_dict": state, "optim_dict": {"state": {}, "param_groups": []}}


@pytest.fixture(scope="module")
def converted() -> dict[str, torch.Tensor]:
    return rfnet_state_dict_from_published(published_checkpoint())


@pytest.fixture(scope="module")
def model(converted) -> RFNet:
    net = RFNet()
    net.load_state_dict(converted, strict=True)
    return net.eval()


def _ours(published_input_tensor: torch.Tensor) -> torch.Tensor:
    """Channels from the published order to this project's."""
    return published_input_tensor[:, [PUBLISHED_MODALITIES.index(m) for m in MODALITIES]]


def _mask(available: list[str]) -> torch.Tensor:
    return torch.tensor([[m in available for m in MODALITIES]])


def _positions(count: int) -> list[int]:
    size = OUTPUTS["input_shape"][2]
    return [(j * 7919 + 1234) % size**3 for j in range(count)]


def _check(probs: torch.Tensor, expected: dict, what: str) -> None:
    """Class means, probabilities at the fixture positions and the argmax histogram of one output."""
    torch.testing.assert_close(
        probs.mean(dim=(0, 2, 3, 4)), torch.tensor(expected["class_mean"]), **TOLERANCE, msg=f"{what}: class means"
    )
    values = torch.tensor(expected["probs"])
    got = probs[0].reshape(probs.shape[1], -1)[:, _positions(values.shape[0])].T
    torch.testing.assert_close(got, values, **TOLERANCE, msg=f"{what}: probabilities")
    histogram = torch.bincount(probs.argmax(dim=1).flatten(), minlength=probs.shape[1])
    # voxels whose two best classes are within float noise may flip: allow a handful
    assert (histogram - torch.tensor(expected["argmax_histogram"])).abs().sum().item() <= 20, what


def test_manifest_header_and_counts():
    """The manifest names its source, and its counts are those of REFERENCE.md and of RFNet()."""
    assert MANIFEST["source"]["repository"] == "https://github.com/dyh127/RFNet"
    assert MANIFEST["source"]["commit"] == OUTPUTS["source"]["commit"] == COMMIT
    assert MANIFEST["wrapper_keys"] == ["epoch", "optim_dict", "state_dict"]
    assert MANIFEST["num_tensors"] == len(MANIFEST["keys"]) == 288
    assert MANIFEST["num_parameters"] == sum(math.prod(s) for _, s, _ in MANIFEST["keys"]) == 8_984_960
    assert all(key.startswith("module.") and dtype == "float32" for key, _, dtype in MANIFEST["keys"])
    assert sum(p.numel() for p in RFNet().parameters()) == MANIFEST["num_parameters"]


def test_key_map_is_a_bijection_onto_our_state_dict():
    table = published_key_map()
    assert list(table) == [key.removeprefix("module.") for key, _, _ in MANIFEST["keys"]]
    ours = [target for target, _ in table.values()]
    assert sorted(ours) == sorted(RFNet().state_dict())


def test_encoders_go_to_their_modality_slot(converted):
    """flair, t1ce, t1, t2 (published) -> slots 0, 2, 1, 3 (this project's order)."""
    state = published_checkpoint()["state_dict"]
    for pub in PUBLISHED_MODALITIES:
        slot = MODALITIES.index(pub)
        torch.testing.assert_close(
            converted[f"encoders.{slot}.stages.0.down.conv.weight"],
            state[f"module.{pub}_encoder.e1_c1.conv.weight"],
            rtol=0,
            atol=0,
        )
    assert [MODALITIES.index(m) for m in PUBLISHED_MODALITIES] == [0, 2, 1, 3]


def test_reproduces_published_outputs(model):
    """Eval mode under each fixture mask (one encoding) and train mode (fused, separate decoders, region maps)."""
    x = _ours(published_input(OUTPUTS["input_shape"][2]))
    with torch.no_grad():
        features = model.encode(x)
        for case in OUTPUTS["eval"]:
            logits = model.decode(features, _mask(case["available"]))
            _check(torch.softmax(logits, dim=1), case, f"eval {case['available']}")
        train = OUTPUTS["train"]
        out = model(x, _mask(train["available"]), return_aux=True)
    _check(torch.softmax(out.logits, dim=1), train["fused"], "train fused")
    for name, expected in train["separate"].items():
        _check(torch.softmax(out.sep_logits[MODALITIES.index(name)], dim=1), expected, f"train separate {name}")
    for level, (probs, expected) in enumerate(zip(out.region_probs, train["regions"], strict=True)):
        _check(probs, expected, f"train region map level {level}")


def test_accepts_every_saved_form(converted):
    """The wrapper, a bare state dict, with or without ``module.``: the same tensors; hparams from the head."""
    wrapped = published_checkpoint()
    bare = wrapped["state_dict"]
    plain = {k.removeprefix("module."): v for k, v in bare.items()}
    for obj in (bare, plain):
        again = rfnet_state_dict_from_published(obj)
        assert list(again) == list(converted)
        assert all(torch.equal(again[k], converted[k]) for k in converted)
    assert rfnet_hparams_from_published(wrapped) == RFNet().hparams


def test_five_class_checkpoint_converts():
    """BraTS2015's published model has 5 classes: the class count comes from the checkpoint's head."""
    net = RFNet(out_channels=5)
    table = {ours: pub for pub, (ours, _) in published_key_map(5).items()}
    state = {}
    for key, value in net.state_dict().items():
        pub = table[key]
        lin = ".modality_weights." in key and value.dim() == 2
        state[f"module.{pub}"] = value.reshape(*value.shape, 1, 1, 1) if lin else value
    assert rfnet_hparams_from_published(state)["out_channels"] == 5
    RFNet(out_channels=5).load_state_dict(rfnet_state_dict_from_published(state), strict=True)


def _edited(edit):
    obj = published_checkpoint()
    edit(obj["state_dict"])
    return obj


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        (lambda: [1, 2], "not a published RFNet checkpoint"),
        (lambda: {"epoch": 3, "optim_dict": {}}, "not a published RFNet checkpoint"),
        (lambda: {"state_dict": {"module.a": 1}}, "not a published RFNet checkpoint"),
        (lambda: _edited(lambda s: s.pop("module.decoder_fuse.seg_layer.weight")), "'decoder_fuse.seg_layer.weight'"),
        (
            lambda: _edited(lambda s: s.update({"module.decoder_fuse.extra.weight": torch.zeros(1)})),
            r"unexpected key 'decoder_fuse.extra.weight'",
        ),
        (
            lambda: _edited(lambda s: s.pop("module.t1_encoder.e2_c3.conv.bias")),
            r"missing key 't1_encoder.e2_c3.conv.bias'",
        ),
        (
            lambda: _edited(lambda s: s.update({"module.t2_encoder.e1_c1.conv.weight": torch.zeros(16, 2, 3, 3, 3)})),
            r"key 't2_encoder.e1_c1.conv.weight' has shape \(16, 2, 3, 3, 3\)",
        ),
        (
            lambda: _edited(
                lambda s: s.update({"module.decoder_sep.seg_layer.bias": torch.zeros(4, dtype=torch.int64)})
            ),
            r"key 'decoder_sep.seg_layer.bias' .*floating point",
        ),
    ],
)
def test_refusals_name_the_key(obj, match):
    with pytest.raises(ValueError, match=match) as info:
        rfnet_state_dict_from_published(obj())
    assert "\n" not in str(info.value)
