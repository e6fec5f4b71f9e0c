"""The method registry, and what every registered method must do: build its network, train on the one trainer, save
and restore its own state, be exact under the encode-once sweep and be rebuilt from a checkpoint.

The tests iterate :data:`lckd_med.methods.METHODS`: a new method is covered by registering it.
"""

from __future__ import annotations

import json

import pytest
import torch

from lckd_med.constants import NUM_MODALITIES, NUM_REGIONS, SUBSET_NAMES, subset_to_mask
from lckd_med.data.transforms import ModalityDropout
from lckd_med.engines import MethodTrainer, build_network, loss_terms
from lckd_med.losses import segmentation_loss
from lckd_med.methods import (
    METHODS,
    LCKDMethod,
    NoDistillationMethod,
    TeacherState,
    TrainingMethod,
    build_method,
    get_method,
    method_name,
    network_class,
    network_classes,
    network_name,
)
from lckd_med.methods import build_network as method_network
from lckd_med.networks import NETWORKS, LCKDNet, OMDNet
from tests.testkit import checkpoint_payload, tiny_method_network, tiny_size

SIZE = 16
FILTERS = [4, 8, 16]
ALL_MASKS = torch.tensor([subset_to_mask(s).tolist() for s in SUBSET_NAMES])  # (15, 4), canonical order

pytestmark = pytest.mark.usefixtures("one_thread")


def _net(name: str, seed: int = 0) -> torch.nn.Module:
    """The method's tiny network (``fullres`` with :data:`FILTERS`, or its own table entry in ``tests/testkit.py``)."""
    return tiny_method_network(name, seed)


def _batches(n: int = 2, size: int = SIZE) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        {
            "image": torch.rand(2, NUM_MODALITIES, size, size, size, generator=g),
            "label": (torch.rand(2, NUM_REGIONS, size, size, size, generator=g) > 0.7).float(),
            "modality_mask": torch.ones(2, NUM_MODALITIES, dtype=torch.bool),
        }
        for _ in range(n)
    ]


def _trainer(method: object, net: torch.nn.Module, phase1: int = 0, size: int = SIZE) -> MethodTrainer:
    dropout = ModalityDropout(prob=1.0, max_kept=3)
    dropout.set_random_state(0)
    return MethodTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=_batches(size=size),
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=1e-3),
        seg_loss=segmentation_loss(),
        dropout=dropout,
        phase1_iterations=phase1,
        method=method,
        amp=False,
    )


# ---------------------------------------------------------------------------------------------- the registry
def test_registry_holds_method_classes_with_label_and_registered_network():
    known = network_classes()
    for name, cls in METHODS.items():
        assert issubclass(cls, TrainingMethod) and isinstance(cls.label, str) and cls.label, name
        assert known[cls.network_class.__name__] is cls.network_class, name
        assert method_name(cls) == name and method_name(cls()) == name  # every setting has a default
    assert set(NETWORKS) <= set(known) and all(known[k] is v for k, v in NETWORKS.items())
    assert all(k == v.__name__ for k, v in NETWORKS.items())  # the key is the class name
    assert len({cls.label for cls in METHODS.values()}) == len(METHODS)


def test_unknown_names_are_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="registered"):
        get_method("nope")
    with pytest.raises(ValueError, match=r"unknown; known: \[.*'LCKDNet'"):
        network_class("Nope")
    with pytest.raises(ValueError, match="not a registered method"):
        method_name(type("Custom", (LCKDMethod,), {}))
    with pytest.raises(ValueError, match="not a registered network"):
        network_name(torch.nn.Linear(2, 2))


def test_build_method_takes_only_its_settings():
    state = TeacherState(["t1ce"])
    lckd = build_method("lckd", teacher_state=state, kd_loss=None, kd_weight=0.2, kd_levels=[-1])
    assert isinstance(lckd, LCKDMethod) and lckd.kd_weight == 0.2 and lckd.status() == {"teachers": "t1ce"}
    base = build_method("lckd_nokd", teacher_state=state, kd_weight=0.2)
    assert isinstance(base, NoDistillationMethod) and base.status() == {}


def test_build_network_drops_options_its_network_does_not_take():
    """A bundle passes every method's network options (LCKD's fill_levels, OMD's kernel sizes)."""
    lckd = method_network("lckd", "fullres", filters=FILTERS, fill_levels="all", restore_kernel_size=1)
    assert type(lckd) is LCKDNet and lckd.fill_levels == "all"
    omd = method_network("omd", "fullres", filters=FILTERS, fill_levels="all", restore_kernel_size=1)
    assert type(omd) is OMDNet and omd.restore_kernel_size == (1, 1, 1)
    with pytest.raises(ValueError, match="preset"):
        method_network("lckd", "nope")


def test_trainer_needs_a_method():
    with pytest.raises(TypeError, match="method"):
        _trainer("lckd", LCKDNet(filters=(4, 8)))


# ---------------------------------------------------------------------------------------------- every method
@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_trains_on_the_one_trainer(name):
    method = build_method(name, teacher_state=TeacherState(["t1ce"]))
    trainer = _trainer(method, _net(name), size=tiny_size(name))
    torch.manual_seed(0)
    trainer.run()
    logged = loss_terms(trainer.state.output)
    assert "loss" in logged and len(logged) > 1 and all(torch.isfinite(torch.tensor(v)) for v in logged.values())
    assert trainer.state.phase == (2 if method.drops_modalities else 1)
    assert trainer.state.status_keys == tuple(method.status())


@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_refuses_another_network(name):
    cls = METHODS[name]
    other = next(n for n, c in METHODS.items() if not issubclass(c.network_class, cls.network_class))
    with pytest.raises(TypeError, match=cls.network_class.__name__):
        cls().bind(_net(other), segmentation_loss())


@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_state_round_trips_as_json(name):
    """What the checkpoint stores as ``method_state``: JSON-able (the safetensors export carries it as text) and
    restored by ``load_state_dict``."""
    method = build_method(name, teacher_state=TeacherState(["t1ce"]))
    method.bind(_net(name), segmentation_loss())
    state = json.loads(json.dumps(method.state_dict()))
    fresh = get_method(name)()
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state and fresh.status() == method.status()


def test_other_networks_are_trained_and_known(monkeypatch):
    """A method may train further network classes (``other_networks``, e.g. one a whole-network preset builds)."""

    class Both(NoDistillationMethod):
        other_networks = (OMDNet,)

    Both().bind(_net("omd"), segmentation_loss())
    with pytest.raises(TypeError, match="trains a LCKDNet "):
        NoDistillationMethod().bind(_net("omd"), segmentation_loss())
    monkeypatch.setattr("lckd_med.methods.registry.NETWORKS", {})
    monkeypatch.setattr("lckd_med.methods.registry.METHODS", {"both": Both})
    assert network_classes() == {"LCKDNet": LCKDNet, "OMDNet": OMDNet}


def test_a_method_without_state_refuses_one():
    with pytest.raises(ValueError, match="keeps no state"):
        NoDistillationMethod().load_state_dict({"teachers": ["t1ce"]})


@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_network_is_exact_under_the_encode_once_sweep(name):
    """forward(x with garbage in the missing channels, mask) == decode_subsets(encode(x)) slice, all 15 subsets.

    In float64: in float32 a different batch composition (the sweep decodes masks together) moves RFNet's logits by
    ~2e-5 (kernels chosen per batch size, amplified by its instance norms); in float64 round-off is far below the
    tolerance, so a real dependence on a missing channel would show."""
    net, size = _net(name).double().eval(), tiny_size(name)
    torch.manual_seed(1)
    x = torch.randn(2, NUM_MODALITIES, size, size, size, dtype=torch.float64)
    with torch.no_grad():
        sweep = net.decode_subsets(net.encode(x), ALL_MASKS)
        channels = getattr(net, "out_channels", NUM_REGIONS)  # 3 regions, or 4 softmax classes (RFNet, mmFormer)
        assert sweep.shape == (2, len(SUBSET_NAMES), channels, size, size, size)
        for k, subset in enumerate(SUBSET_NAMES):
            garbage = x.clone()
            garbage[:, ~ALL_MASKS[k]] = torch.randn_like(garbage[:, ~ALL_MASKS[k]]) * 7
            out = net(garbage, ALL_MASKS[k].expand(2, -1))
            torch.testing.assert_close(out, sweep[:, k], rtol=0, atol=1e-9, msg=subset)


@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_network_is_rebuilt_from_a_checkpoint(name):
    net = _net(name).eval()
    ckpt = json.loads(json.dumps({"network": checkpoint_payload(net)["network"]}))  # as stored: plain JSON
    rebuilt = build_network({**checkpoint_payload(net), **ckpt}).eval()
    assert type(rebuilt) is type(net) and network_name(rebuilt) == type(net).__name__
    size = tiny_size(name)
    x = torch.randn(1, NUM_MODALITIES, size, size, size)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), net(x))
