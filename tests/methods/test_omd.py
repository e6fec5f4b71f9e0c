"""OMD on the one trainer: one-stage iteration (dropout, two paths, seg + MMD + KL, one step), phases, weights,
validation of the method's settings."""

from __future__ import annotations

import math

import pytest
import torch

from lckd_med.data.transforms import ModalityDropout
from lckd_med.engines import MethodTrainer, loss_terms
from lckd_med.losses import FeatureMMDLoss, TemperatureKLLoss, segmentation_loss
from lckd_med.methods import OMDMethod
from lckd_med.networks import LCKDNet, OMDNet

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 16


def _batches(n: int = 2, batch: int = 2) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        label = (torch.rand(batch, 3, SIZE, SIZE, SIZE, generator=g) > 0.8).float()
        out.append(
            {
                "image": torch.randn(batch, 4, SIZE, SIZE, SIZE, generator=g),
                "label": label,
                "modality_mask": torch.ones(batch, 4, dtype=torch.bool),
            }
        )
    return out


def _trainer(
    iterations: int = 2, net: torch.nn.Module | None = None, phase1_iterations: int = 0, dropout=None, **settings
) -> MethodTrainer:
    torch.manual_seed(0)
    net = net if net is not None else OMDNet(filters=(4, 8))
    if dropout is None:
        dropout = ModalityDropout(prob=1.0, max_kept=3)
        dropout.set_random_state(seed=0)
    return MethodTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=_batches(iterations),
        epoch_length=iterations,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.01),
        seg_loss=segmentation_loss(),
        method=OMDMethod(**settings),
        dropout=dropout,
        phase1_iterations=phase1_iterations,
        amp=False,
    )


def test_one_stage_iteration_trains_with_every_term():
    trainer = _trainer(iterations=2)
    before = {k: v.detach().clone() for k, v in trainer.network.state_dict().items()}
    trainer.run()
    out = trainer.state.output
    assert {"loss", "seg_loss", "seg_real_loss", "mmd_loss", "kl_loss", "adaptation_loss"} <= set(out)
    terms = loss_terms(out)
    assert all(math.isfinite(v) for v in terms.values())
    assert terms["seg_real_loss"] > 0 and terms["mmd_loss"] > 0 and terms["kl_loss"] > 0
    expected = terms["seg_loss"] + terms["seg_real_loss"] + 0.1 * terms["mmd_loss"] + 1.0 * terms["kl_loss"]
    assert terms["loss"] == pytest.approx(expected, rel=1e-5)
    assert terms["adaptation_loss"] == pytest.approx(0.1 * terms["mmd_loss"] + terms["kl_loss"], rel=1e-5)
    assert trainer.state.phase == 2 and trainer.state.iteration == 2
    after = trainer.network.state_dict()
    # restoration and translation blocks (the transfer and fusion tasks) were updated in the same step
    for key in (
        "fusions.0.restore.hidden.conv.weight",
        "fusions.1.translate.out.conv.weight",
        "decoder.head.conv.conv.weight",
    ):
        assert not torch.equal(before[key], after[key]), key


def test_phase_one_has_no_dropout_and_no_adaptation_terms():
    trainer = _trainer(iterations=2, phase1_iterations=10)
    trainer.run()
    terms = loss_terms(trainer.state.output)
    assert trainer.state.phase == 1
    assert terms["seg_real_loss"] == terms["mmd_loss"] == terms["kl_loss"] == terms["adaptation_loss"] == 0.0
    assert terms["loss"] == pytest.approx(terms["seg_loss"])


@pytest.mark.parametrize("weights", [{"mmd_weight": 0.0}, {"kl_weight": 0.0}, {"real_seg_weight": 0.0}])
def test_zero_weight_switches_a_term_off(weights):
    trainer = _trainer(iterations=1, **weights)
    trainer.run()
    terms = loss_terms(trainer.state.output)
    key = {"mmd_weight": "mmd_loss", "kl_weight": "kl_loss", "real_seg_weight": "seg_real_loss"}[next(iter(weights))]
    assert terms[key] == 0.0
    others = {"mmd_loss", "kl_loss", "seg_real_loss"} - {key}
    assert all(terms[k] > 0 for k in others)


def test_mmd_levels_and_custom_losses_are_used():
    trainer = _trainer(
        iterations=1, mmd_levels=[-1], mmd_loss=FeatureMMDLoss(max_samples=8), kl_loss=TemperatureKLLoss(4.0)
    )
    assert trainer.method.mmd_levels == [1]
    assert trainer.method.kl_loss.temperature == 4.0
    trainer.run()
    assert loss_terms(trainer.state.output)["mmd_loss"] > 0


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"mmd_weight": -0.1}, ValueError),
        ({"mmd_weight": "0.1"}, TypeError),
        ({"kl_weight": math.inf}, ValueError),
        ({"kl_weight": None}, TypeError),
        ({"real_seg_weight": math.nan}, ValueError),
        ({"real_seg_weight": True}, TypeError),
        ({"phase1_iterations": -1}, ValueError),
        ({"phase1_iterations": 1.5}, ValueError),
        ({"mmd_levels": []}, ValueError),
        ({"mmd_levels": [2]}, ValueError),
        ({"mmd_levels": "0"}, ValueError),
        ({"net": LCKDNet(filters=(4, 8))}, TypeError),
        ({"dropout": "uniform"}, TypeError),
    ],
    ids=[
        "mmd_weight_negative",
        "mmd_weight_str",
        "kl_weight_inf",
        "kl_weight_none",
        "real_seg_weight_nan",
        "real_seg_weight_bool",
        "phase1_negative",
        "phase1_float",
        "mmd_levels_empty",
        "mmd_levels_out_of_range",
        "mmd_levels_str",
        "network_not_omd",
        "dropout_type",
    ],
)
def test_bad_arguments(kwargs, error):
    kwargs = dict(kwargs)
    net = kwargs.pop("net", None)
    with pytest.raises(error):
        _trainer(iterations=1, net=net, **kwargs)


def test_mmd_levels_default_to_the_restored_levels():
    net = OMDNet(filters=(4, 8, 16), restore_levels="bottleneck")
    trainer = _trainer(iterations=1, net=net)
    assert trainer.method.mmd_levels == [2]
    trainer.run()
    assert loss_terms(trainer.state.output)["mmd_loss"] > 0
    with pytest.raises(ValueError, match="does not restore"):
        _trainer(iterations=1, net=OMDNet(filters=(4, 8, 16), restore_levels="bottleneck"), mmd_levels=[0])
