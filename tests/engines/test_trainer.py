"""MethodTrainer running LCKD: one step updates weights, two phases (modality dropout in phase 2), the KD term."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events

from lckd_med.constants import NUM_MODALITIES, NUM_REGIONS
from lckd_med.data.transforms import ModalityDropout
from lckd_med.engines.trainer import MethodTrainer, loss_terms
from lckd_med.losses import CrossModalDistillationLoss, segmentation_loss
from lckd_med.methods import LCKDMethod, TeacherState
from lckd_med.networks import LCKDNet

SIZE = 8


pytestmark = pytest.mark.usefixtures("one_thread")


def _batches(n: int, mask: list[bool] | None = None, batch: int = 2, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    avail = torch.tensor(mask or [True] * NUM_MODALITIES).expand(batch, -1).clone()
    out = []
    for _ in range(n):
        image = torch.randn(batch, NUM_MODALITIES, SIZE, SIZE, SIZE, generator=g) * avail[:, :, None, None, None]
        label = (torch.rand(batch, NUM_REGIONS, SIZE, SIZE, SIZE, generator=g) > 0.7).float()
        out.append({"image": image, "label": label, "modality_mask": avail})
    return out


def _trainer(
    data: list, max_epochs: int = 1, phase1: int = 100, kd_weight: float = 0.1, teachers=("t1ce",), kd_levels=(-1,)
) -> MethodTrainer:
    torch.manual_seed(0)
    net = LCKDNet(filters=(4, 8))
    dropout = ModalityDropout(prob=1.0, distribution="uniform", max_kept=3)
    dropout.set_random_state(0)
    method = LCKDMethod(TeacherState(default=list(teachers)), CrossModalDistillationLoss(), kd_weight, kd_levels)
    return MethodTrainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=data,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        seg_loss=segmentation_loss(),
        method=method,
        dropout=dropout,
        phase1_iterations=phase1,
        amp=False,
    )


def _record_masks(trainer: MethodTrainer) -> list[torch.Tensor]:
    masks: list[torch.Tensor] = []

    def hook(module, args, kwargs):
        masks.append(args[1].detach().clone())

    trainer.network.register_forward_pre_hook(hook, with_kwargs=True)
    return masks


def test_one_iteration_updates_weights_and_reports_terms():
    trainer = _trainer(_batches(1))
    before = {k: v.clone() for k, v in trainer.network.state_dict().items()}
    outputs = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(dict(e.state.output)))
    trainer.run()
    after = trainer.network.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and any("encoders" in k for k in changed) and any("head" in k for k in changed)
    terms = loss_terms(outputs[0])
    assert set(terms) == {"loss", "seg_loss", "kd_loss"}
    assert terms["loss"] == pytest.approx(terms["seg_loss"] + 0.1 * terms["kd_loss"], rel=1e-5)
    assert terms["kd_loss"] > 0  # t1ce teaches the three other present modalities
    assert not outputs[0]["loss"].requires_grad


def test_phase1_keeps_all_modalities_phase2_drops():
    trainer = _trainer(_batches(6), phase1=3)
    masks = _record_masks(trainer)
    phases = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: phases.append(e.state.phase))
    trainer.run()
    assert phases == [1, 1, 1, 2, 2, 2]
    assert all(bool(m.all()) for m in masks[:3])
    for m in masks[3:]:  # max_kept=3: every sample loses at least one sequence, keeps at least one
        assert m.shape == (2, NUM_MODALITIES)
        assert bool((m.sum(dim=1) <= 3).all()) and bool((m.sum(dim=1) >= 1).all())


def test_phase2_never_revives_a_missing_modality():
    trainer = _trainer(_batches(4, mask=[True, False, True, True]), phase1=0)
    masks = _record_masks(trainer)
    trainer.run()
    assert len(masks) == 4 and not any(bool(m[:, 1].any()) for m in masks)


def _phase2_masks(seed_dropout: bool) -> list[torch.Tensor]:
    torch.manual_seed(123)
    net = LCKDNet(filters=(4, 8))
    dropout = ModalityDropout(prob=1.0, distribution="uniform", max_kept=3)
    if seed_dropout:
        dropout.set_random_state(7)
    trainer = MethodTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=_batches(3, batch=4),
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        seg_loss=segmentation_loss(),
        method=LCKDMethod(),
        dropout=dropout,
        phase1_iterations=0,
        amp=False,
    )
    masks = _record_masks(trainer)
    trainer.run()
    return masks


@pytest.mark.parametrize("seed_dropout", [False, True], ids=["seeded_by_trainer", "seeded_by_caller"])
def test_phase2_dropout_is_reproducible_under_a_global_seed(seed_dropout):
    """MONAI's set_determinism does not reach an unseeded transform's RandomState: the trainer seeds it."""
    first, second = _phase2_masks(seed_dropout), _phase2_masks(seed_dropout)
    assert len(first) == 3
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("iteration, phase", [(0, 1), (3, 1), (4, 2), (100, 2)])
def test_phase_of(iteration, phase):
    assert _trainer(_batches(1), phase1=3).phase_of(iteration) == phase


@pytest.mark.parametrize(
    "kd_weight, teachers, mask",
    [
        (0.0, ("t1ce",), None),
        (0.1, ("t1ce",), [True, True, False, True]),
        (0.1, ("flair",), [True, False, False, False]),
    ],
    ids=["weight_0", "teacher_absent", "teacher_alone"],
)
def test_kd_term_is_zero(kd_weight, teachers, mask):
    trainer = _trainer(_batches(1, mask=mask), kd_weight=kd_weight, teachers=teachers)
    outputs = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(loss_terms(e.state.output)))
    trainer.run()
    assert outputs[0]["kd_loss"] == 0.0
    assert outputs[0]["loss"] == pytest.approx(outputs[0]["seg_loss"], rel=1e-6)


def test_state_shows_current_teachers():
    trainer = _trainer(_batches(2), teachers=("t1ce",))
    seen = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.teachers))

    @trainer.on(Events.ITERATION_COMPLETED(once=1))
    def _elect(engine):
        engine.method.teacher_state.teachers = ["flair", "t2"]

    trainer.run()
    assert seen == ["t1ce", "flair+t2"]


@pytest.mark.parametrize(
    "kwargs, match",
    [({"kd_weight": -0.1}, "kd_weight"), ({"phase1": -1}, "phase1_iterations"), ({"kd_levels": []}, "kd_levels")],
    ids=["kd_weight", "phase1", "kd_levels"],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _trainer(_batches(1), **kwargs)
