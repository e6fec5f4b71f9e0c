"""Method registry and the methods as strategy objects: loss terms, phases, the two baselines."""

from __future__ import annotations

import pytest
import torch

from lckd_med.data.transforms import ModalityDropout
from lckd_med.engines import MethodTrainer, TeacherState, loss_terms
from lckd_med.losses import CrossModalDistillationLoss, segmentation_loss
from lckd_med.methods import (
    METHODS,
    FullModalityMethod,
    LCKDMethod,
    NoDistillationMethod,
    OMDMethod,
    TrainingMethod,
    build_method,
    get_method,
)
from lckd_med.networks import LCKDNet, OMDNet, build_preset
from lckd_med.networks.presets import METHODS as NETWORK_FAMILIES

SIZE = 16


def _batches(n: int = 2) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        {
            "image": torch.rand(2, 4, SIZE, SIZE, SIZE, generator=g),
            "label": (torch.rand(2, 3, SIZE, SIZE, SIZE, generator=g) > 0.7).float(),
            "modality_mask": torch.ones(2, 4, dtype=torch.bool),
        }
        for _ in range(n)
    ]


def _trainer(method: object, net: torch.nn.Module, phase1: int = 0) -> MethodTrainer:
    return MethodTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=_batches(),
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=1e-3),
        seg_loss=segmentation_loss(),
        dropout=ModalityDropout(prob=1.0, max_kept=3),
        phase1_iterations=phase1,
        method=method,
        amp=False,
    )


def _run(method: TrainingMethod, net: torch.nn.Module, phase1: int = 0) -> MethodTrainer:
    torch.manual_seed(0)
    trainer = _trainer(method, net, phase1)
    trainer.run()
    return trainer


def test_registry_names():
    assert METHODS == {
        "lckd": LCKDMethod,
        "omd": OMDMethod,
        "lckd_nokd": NoDistillationMethod,
        "all4": FullModalityMethod,
    }
    with pytest.raises(ValueError, match="registered"):
        get_method("nope")


def test_build_method_takes_only_its_settings():
    state = TeacherState(["t1ce"])
    lckd = build_method("lckd", teacher_state=state, kd_loss=None, kd_weight=0.2, kd_levels=[-1])
    assert isinstance(lckd, LCKDMethod) and lckd.kd_weight == 0.2 and lckd.status() == {"teachers": "t1ce"}
    base = build_method("lckd_nokd", teacher_state=state, kd_weight=0.2)
    assert isinstance(base, NoDistillationMethod) and base.kd_weight == 0.0 and base.status() == {}


@pytest.mark.parametrize(
    "name, net, terms, phase",
    [
        ("lckd", lambda: LCKDNet(filters=(4, 8)), {"loss", "seg_loss", "kd_loss"}, 2),
        ("omd", lambda: OMDNet(filters=(4, 8)), {"loss", "seg_loss", "seg_real_loss", "mmd_loss", "kl_loss", "adaptation_loss"}, 2),
        ("lckd_nokd", lambda: LCKDNet(filters=(4, 8)), {"loss", "seg_loss", "kd_loss"}, 2),
        ("all4", lambda: LCKDNet(filters=(4, 8)), {"loss", "seg_loss", "kd_loss"}, 1),
    ],
)  # fmt: skip
def test_one_trainer_runs_every_method(name, net, terms, phase):
    settings = {"teacher_state": TeacherState(["t1ce"]), "kd_loss": CrossModalDistillationLoss()}
    trainer = _run(build_method(name, **settings), net())
    logged = loss_terms(trainer.state.output)
    assert set(logged) == terms and all(torch.isfinite(torch.tensor(v)) for v in logged.values())
    assert trainer.state.phase == phase  # all4 never enters the dropout phase
    assert trainer.state.status_keys == (("teachers",) if name == "lckd" else ())
    if name == "lckd_nokd":
        assert logged["kd_loss"] == 0.0


@pytest.mark.parametrize("name", sorted(METHODS))
def test_each_method_binds_the_network_of_its_family(name):
    """One source for method -> network: the method's network_family, a key of the presets' network table."""
    family = METHODS[name].network_family
    net = build_preset("fullres", family, filters=[4, 8])
    assert type(net) is NETWORK_FAMILIES[family]
    build_method(name, teacher_state=TeacherState(["t1ce"])).bind(net, segmentation_loss())  # OMD checks its net


def test_omd_method_needs_an_omd_net():
    with pytest.raises(TypeError, match="OMDNet"):
        _run(OMDMethod(), LCKDNet(filters=(4, 8)))


def test_trainer_needs_a_method():
    with pytest.raises(TypeError, match="method"):
        _trainer("lckd", LCKDNet(filters=(4, 8)))
