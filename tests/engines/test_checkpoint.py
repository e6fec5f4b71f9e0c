"""Checkpoints: atomic writes, weights-only loading, refusals, RNG round trip, network rebuild."""

from __future__ import annotations

import argparse
import random

import numpy as np
import pytest
import torch

from lckd_med.constants import MODALITIES
from lckd_med.engines.checkpoint import (
    CHECKPOINT_FORMAT,
    build_network,
    check_network_spec,
    checkpoint_spec,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    unwrap_model,
)
from lckd_med.modalities import BRATS, ModalitySpec
from lckd_med.networks import LCKDNet
from tests.testkit import checkpoint_payload

FILTERS = [4, 8]


pytestmark = pytest.mark.usefixtures("one_thread")


def _net(seed: int = 0) -> LCKDNet:
    torch.manual_seed(seed)
    return LCKDNet(filters=FILTERS)


def _payload(net: torch.nn.Module | None = None, **changes) -> dict:
    return checkpoint_payload(net or _net(), **{"method_state": {"teachers": ["t1ce"]}, "iteration": 8, **changes})


def test_save_is_atomic_and_loads_weights_only(tmp_path):
    path = save_checkpoint(tmp_path / "sub" / "model.pt", _payload())
    assert path == tmp_path / "sub" / "model.pt"
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]  # no temporary file left
    raw = torch.load(path, weights_only=True)  # plain containers only: no pickled object
    assert raw["format"] == CHECKPOINT_FORMAT and raw["method_state"] == {"teachers": ["t1ce"]}
    ckpt = load_checkpoint(path)
    assert ckpt["iteration"] == 8 and ckpt["network"]["hparams"]["filters"] == FILTERS


def test_failed_save_keeps_previous_file_and_leaves_no_temp(tmp_path):
    path = save_checkpoint(tmp_path / "model.pt", _payload(iteration=1))
    with pytest.raises(TypeError, match="pickle"):  # a generator cannot be pickled: torch.save fails half-way
        save_checkpoint(path, _payload(iteration=2, bad=(x for x in ())))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    assert load_checkpoint(path)["iteration"] == 1


def test_save_requires_keys(tmp_path):
    payload = _payload()
    del payload["label_convention"]
    with pytest.raises(ValueError, match="label_convention"):
        save_checkpoint(tmp_path / "model.pt", payload)
    assert not (tmp_path / "model.pt").exists()


def test_load_rejects_pickled_object(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(_payload(extra=argparse.Namespace(a=1)), path)  # only refusable with weights_only=True
    with pytest.raises(ValueError, match="not a readable lckd_med checkpoint"):
        load_checkpoint(path)


def test_load_rejects_wrong_format(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(_payload(format="someone_else/2"), path)
    with pytest.raises(ValueError, match="not an lckd_med checkpoint"):
        load_checkpoint(path)


def test_load_rejects_plain_state_dict(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(_net().state_dict(), path)
    with pytest.raises(ValueError, match="not an lckd_med checkpoint"):
        load_checkpoint(path)


def test_load_rejects_corrupt_file(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"not a zip archive at all")
    with pytest.raises(ValueError, match="not a readable"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "key, value",
    [("modalities", list(reversed(MODALITIES))), ("regions", ["WT", "TC", "ET"])],
    ids=["modality_order", "region_order"],
)
def test_load_rejects_other_channel_order(tmp_path, key, value):
    path = tmp_path / "model.pt"
    torch.save(_payload(**{key: value}), path)
    with pytest.raises(ValueError, match="order"):
        load_checkpoint(path)


def test_load_rejects_missing_keys(tmp_path):
    path = tmp_path / "model.pt"
    payload = _payload()
    del payload["model"]
    torch.save(payload, path)
    with pytest.raises(ValueError, match="lacks keys"):
        load_checkpoint(path)


def test_load_missing_file_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="train first"):
        load_checkpoint(tmp_path / "nowhere" / "model.pt")


def _draws() -> tuple:
    return (
        [random.random() for _ in range(3)],
        random.gauss(0, 1),
        np.random.rand(3).tolist(),
        np.random.randn(),  # exercises numpy's cached Gaussian
        torch.rand(3).tolist(),
    )


def test_rng_state_round_trip_through_checkpoint(tmp_path):
    net = _net()  # seeds torch itself: build it before taking the state
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    random.gauss(0, 1)  # leave a cached gauss value in Python's state
    np.random.randn()
    path = save_checkpoint(tmp_path / "model.pt", _payload(net, rng=rng_state()))
    expected = _draws()
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    assert _draws() != expected
    set_rng_state(load_checkpoint(path)["rng"])  # weights-only load of the RNG state
    assert _draws() == expected


def test_set_rng_state_leaves_missing_streams_alone():
    random.seed(5)
    np.random.seed(5)
    state = rng_state()
    torch.manual_seed(7)
    expected_torch = torch.rand(2)
    torch.manual_seed(7)
    set_rng_state({"python": state["python"], "numpy": state["numpy"]})
    torch.testing.assert_close(torch.rand(2), expected_torch)


def test_build_network_rebuilds_identical_outputs(tmp_path):
    net = _net(3).eval()
    x = torch.randn(1, len(MODALITIES), 8, 8, 8)
    mask = torch.tensor([[True, False, True, False]])
    path = save_checkpoint(tmp_path / "model.pt", _payload(net))
    rebuilt = build_network(load_checkpoint(path)).eval()
    assert isinstance(rebuilt, LCKDNet) and rebuilt.hparams == net.hparams
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x, mask), net(x, mask), rtol=0, atol=0)
        untrained = build_network(load_checkpoint(path), load_weights=False).eval()
        assert not torch.allclose(untrained(x, mask), net(x, mask))


def test_build_network_unknown_name():
    payload = _payload()
    payload["network"] = {"name": "NoSuchNet", "hparams": {}}
    with pytest.raises(ValueError, match=r"checkpoint network 'NoSuchNet' is unknown; known: \[.*'LCKDNet'"):
        build_network(payload)


def test_unwrap_model_removes_wrappers():
    net = _net()
    wrapped = torch.nn.DataParallel(torch.nn.DataParallel(net))
    assert unwrap_model(wrapped) is net
    assert unwrap_model(net) is net


# ---------------------------------------------------------------------------- modality spec
RGBD = ModalitySpec(["rgb", "depth"], [3, 1], spatial_dims=2)


def _rgbd_payload() -> dict:
    torch.manual_seed(0)
    net = LCKDNet(in_modalities=2, in_channels=[3, 1], spatial_dims=2, filters=FILTERS)
    return _payload(net, modalities=list(RGBD.names), modality_spec=RGBD.to_dict())


def test_checkpoint_without_a_spec_is_brats(tmp_path):
    path = save_checkpoint(tmp_path / "model.pt", _payload())
    assert checkpoint_spec(load_checkpoint(path)) == BRATS


def test_checkpoint_spec_round_trip_and_rebuild(tmp_path):
    path = save_checkpoint(tmp_path / "model.pt", _rgbd_payload())
    ckpt = load_checkpoint(path, modalities=RGBD)
    assert checkpoint_spec(ckpt) == RGBD
    assert build_network(ckpt).in_channels == (3, 1)
    assert checkpoint_spec(load_checkpoint(path, modalities=None)) == RGBD  # None: any spec


@pytest.mark.parametrize(
    ("expected", "match"),
    [
        (None, None),
        (BRATS, r"differs from the data \(brats\): names: .*channels: .*spatial_dims: 2 vs 3"),
        (ModalitySpec(["rgb", "depth"], [3, 1], spatial_dims=3), r"spatial_dims: 2 vs 3$"),
        (ModalitySpec(["rgb", "depth"], [1, 1], spatial_dims=2), r"channels: \(3, 1\) vs \(1, 1\)$"),
    ],
)
def test_load_names_what_differs_from_the_data(tmp_path, expected, match):
    path = save_checkpoint(tmp_path / "model.pt", _rgbd_payload())
    if match is None:
        load_checkpoint(path, modalities=expected)
        return
    with pytest.raises(ValueError, match=match):
        load_checkpoint(path, modalities=expected)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"modality_spec": {"names": ["rgb"], "spatial_dims": 5}}, "invalid modality_spec: spatial_dims"),
        ({"modality_spec": "rgb"}, "invalid modality_spec"),
        ({"modalities": ["depth", "rgb"]}, r"channel order \['depth', 'rgb'\] disagrees"),
    ],
)
def test_load_rejects_a_bad_spec(tmp_path, changes, match):
    path = save_checkpoint(tmp_path / "model.pt", {**_rgbd_payload(), **changes})
    with pytest.raises(ValueError, match=match):
        load_checkpoint(path, modalities=None)


def test_build_network_refuses_a_network_that_does_not_take_the_spec():
    ckpt = {**_rgbd_payload(), "modality_spec": ModalitySpec(["rgb", "depth"], [3, 2], spatial_dims=2).to_dict()}
    with pytest.raises(ValueError, match=r"checkpoint network LCKDNet does not take .*channels per modality \[3, 1\]"):
        build_network(ckpt)
    check_network_spec(ckpt["network"]["hparams"], RGBD)
    with pytest.raises(ValueError, match=r"modalities 2 vs 4; channels per modality \[3, 1\] vs \[1, 1, 1, 1\]"):
        check_network_spec(ckpt["network"]["hparams"], BRATS)
