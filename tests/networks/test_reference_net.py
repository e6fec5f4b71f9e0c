"""``network_preset reference``: the LCKD reference network (shared ResNet-50 + ASPP encoder, reference decoder).

Pinned here: the parameter count of the reference code (43,656,672, counted on billhhh/LCKD@5ba51b5), its training
FLOPs per voxel (1.06 MFLOP, REFERENCE.md section 7), its outputs on fixed weights and input (a fixture computed by
running the reference code, see ``fixtures/reference_net_outputs.json``), and that it works with the encode-once
sweep, checkpoints, export and LCKD training.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lckd_med.benchmarks.flops import count_flops
from lckd_med.benchmarks.train_step import make_batch, training_loss
from lckd_med.engines.checkpoint import build_network, load_checkpoint, save_checkpoint
from lckd_med.engines.election import single_modality_dice
from lckd_med.engines.export import ExportableSegmenter
from lckd_med.losses import CrossModalDistillationLoss, segmentation_loss
from lckd_med.methods import METHODS, TeacherState, TrainBatch, build_method, network_class
from lckd_med.networks import PRESETS, LCKDNet, OMDNet, ReferenceLCKDNet, build_preset
from lckd_med.networks.reference_net import REFERENCE_PARAMETERS
from lckd_med.prediction.sweep import subset_masks
from tests.testkit import checkpoint_payload

FIXTURE = Path(__file__).parent / "fixtures" / "reference_net_outputs.json"
ROI = (32, 32, 16)  # the smallest window: H, W multiples of 32, D of 16
# the bottleneck of ROI is 1x1x1, where instance norm leaves only its bias; training needs 2 voxels there
TRAIN_ROI = (64, 32, 16)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def net() -> ReferenceLCKDNet:
    torch.manual_seed(0)
    return ReferenceLCKDNet()


def deterministic_(net: torch.nn.Module) -> None:
    """Fill every parameter from a sine (the rule the fixture was computed with on the reference code)."""
    with torch.no_grad():
        for i, (name, p) in enumerate(net.named_parameters()):
            wave = torch.sin(0.7 * torch.arange(p.numel(), dtype=torch.float64) + i).reshape(p.shape)
            if p.dim() > 1:
                fan_in = p[0].numel() if not name.startswith("decoder.up") else p.shape[0] * p[0, 0].numel()
                p.copy_(wave / fan_in**0.5)
            elif name.endswith("weight"):
                p.copy_(1 + 0.1 * wave)
            else:
                p.copy_(0.1 * wave)


def test_parameter_count_equals_the_reference():
    with torch.device("meta"):
        meta = ReferenceLCKDNet()
    count = sum(p.numel() for p in meta.parameters())
    assert count == REFERENCE_PARAMETERS == 43_656_672
    encoder = meta.encoders[0]
    assert sum(p.numel() for p in [*encoder.stem.parameters(), *encoder.stages.parameters()]) == 29_029_440
    assert sum(p.numel() for p in [*encoder.reduce.parameters(), *encoder.aspp.parameters()]) == 6_098_432
    assert sum(p.numel() for p in meta.decoder.parameters()) == 8_528_800


def test_training_flops_per_voxel_match_the_reference(net):
    """1.06 MFLOP per input voxel per training step, counted as lckd_med.benchmarks.flops counts (REFERENCE.md 7)."""
    x, y = make_batch(1, ROI, "cpu")
    flops = count_flops(lambda: training_loss(net, "lckd", x, y).backward())
    net.zero_grad(set_to_none=True)
    assert flops / (x.shape[0] * x[0, 0].numel()) / 1e6 == pytest.approx(1.06, abs=0.005)


def test_outputs_equal_the_reference_code_on_fixed_weights():
    expected = json.loads(FIXTURE.read_text())["cases"]

    def ref(values: list) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float64)

    model = ReferenceLCKDNet().double().eval()
    deterministic_(model)
    x = torch.sin(0.05 * torch.arange(4 * 32 * 32 * 16, dtype=torch.float64)).reshape(1, 4, 32, 32, 16)
    masks = {"all": [True] * 4, "t1ce": [False, False, True, False]}
    assert set(expected) == set(masks)
    with torch.no_grad():
        for name, case in expected.items():
            mask = torch.tensor([masks[name]])
            logits, feats = model(x * mask[:, :, None, None, None], mask, return_features=True)
            got = logits[0]
            torch.testing.assert_close(got.sum(dim=(1, 2, 3)), ref(case["channel_sums"]), rtol=1e-9, atol=1e-7)
            torch.testing.assert_close(
                got.abs().sum(dim=(1, 2, 3)), ref(case["channel_abs_sums"]), rtol=1e-9, atol=1e-7
            )
            for pos, values in case["values"]:
                torch.testing.assert_close(got[(slice(None), *pos)], ref(values), rtol=1e-9, atol=1e-9)
            # knowledge distillation reads the ASPP output before the bottleneck fill
            present = [m for m, keep in enumerate(masks[name]) if keep]
            aspp = torch.stack([feats[-1][0, m].sum() for m in present])
            torch.testing.assert_close(aspp, ref(case["aspp_sums"]), rtol=1e-9, atol=1e-7)


def test_encode_once_sweep_equals_forward(net):
    net.eval()
    x = torch.randn(1, 4, *ROI, generator=torch.Generator().manual_seed(1))
    masks = subset_masks(["flair+t2", "flair+t1+t1ce+t2"])
    with torch.no_grad():
        swept = net.decode_subsets(net.encode(x), masks)
        for k, mask in enumerate(masks):
            # the missing channels hold noise: the network must never read them
            torch.testing.assert_close(swept[0, k], net(x, mask)[0], rtol=1e-3, atol=1e-3)  # fp32 round-off


def test_checkpoint_rebuild_and_export(net, tmp_path):
    net.eval()
    path = save_checkpoint(tmp_path / "model.pt", checkpoint_payload(net, train_config={"roi_size": list(ROI)}))
    rebuilt = build_network(load_checkpoint(path)).eval()
    assert type(rebuilt) is ReferenceLCKDNet and rebuilt.hparams == net.hparams
    x = torch.rand(1, 4, *ROI, generator=torch.Generator().manual_seed(2))
    x[:, 1] = 0  # t1 missing: an all-zero channel for the image-only export
    mask = torch.tensor([[True, False, True, True]])
    with torch.no_grad():
        want = net(x, mask)
        torch.testing.assert_close(rebuilt(x, mask), want)
        torch.testing.assert_close(ExportableSegmenter(rebuilt).eval()(x), want, rtol=1e-4, atol=1e-4)


def test_lckd_step_and_election_at_a_tiny_size(net):
    """One phase-2 LCKD step (KD from T1ce, one sequence dropped) changes the weights; the election scores it.

    The instance-norm biases are set as after phase 1: at initialisation (biases 0) the zero-input encoding of a
    dropped sequence is exactly 0 and its gradient through ~50 zero-variance instance norms overflows float32, in
    the reference code too, whose phase 2 always starts from its phase-1 weights (docs/reproduce.md).
    """
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.dim() == 1 and name.endswith("bias"):
                p.copy_(0.1 * torch.sin(torch.arange(p.numel()) + 0.5))
    net.train()
    teachers = TeacherState(["t1ce"])
    method = build_method("lckd", teacher_state=teachers, kd_loss=CrossModalDistillationLoss(), kd_weight=0.1)
    method.bind(net, segmentation_loss(smooth_dr=1.0))
    image, label = make_batch(1, TRAIN_ROI, "cpu")
    mask = torch.tensor([[True, False, True, True]])
    batch = TrainBatch(image, image * mask[:, :, None, None, None], label, torch.ones_like(mask), mask)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    before = net.decoder.head.weight.detach().clone()
    loss, _, terms = method.compute_loss(batch, phase=2)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    assert torch.isfinite(loss) and float(terms["kd_loss"].detach()) > 0
    assert not torch.equal(before, net.decoder.head.weight)
    sums, counts = single_modality_dice(net, [{"image": image, "label": label}], ROI, "cpu", amp=False)
    assert counts.tolist() == [1, 1, 1, 1] and torch.isfinite(sums).all()


@pytest.mark.parametrize(
    ("network", "overrides", "match"),
    [
        (OMDNet, {}, "LCKD reference network and stands in for LCKDNet only"),
        (LCKDNet, {"share_encoder": False}, "shares one encoder"),
        (LCKDNet, {"filters": [8, 16]}, "unknown ReferenceLCKDNet arguments"),
        (LCKDNet, {"kernel_size": 5}, "unknown ReferenceLCKDNet arguments"),
        (LCKDNet, {"fill_levels": "some"}, "fill_levels"),
        (LCKDNet, {"spatial_dims": 2}, "3-D only"),
        (LCKDNet, {"in_channels": [1, 2, 1, 1]}, "same channels"),
        (LCKDNet, {"in_modalities": 0}, "in_modalities"),
    ],
)
def test_bad_arguments(network, overrides, match):
    with torch.device("meta"), pytest.raises(ValueError, match=match):
        build_preset("reference", network, **overrides)


def test_preset_ignores_the_bundles_neutral_overrides_and_round_trips():
    with torch.device("meta"):
        built = build_preset("reference", LCKDNet, filters=None, share_encoder=None, fill_levels="all")
        assert type(built) is ReferenceLCKDNet and built.fill_levels == "all"
        assert ReferenceLCKDNet.from_hparams(json.loads(json.dumps(built.hparams))).hparams == built.hparams
        assert build_preset("reference", LCKDNet, share_encoder=True).size_divisor == (32, 32, 16)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_builds_the_reference_network_or_refuses_it_in_one_line(method):
    """LCKD and its baselines train the reference network (``network_preset reference``: one of their
    ``other_networks``, so checkpoints rebuild it by name); the other methods' modules need U-Net features."""
    cls = METHODS[method]
    with torch.device("meta"):
        if ReferenceLCKDNet in cls.other_networks:
            net = cls.build_network("reference", filters=None, share_encoder=None, fill_levels="bottleneck")
            assert type(net) is ReferenceLCKDNet
            cls().bind(net, segmentation_loss())  # the method accepts it
        else:
            with pytest.raises(ValueError) as info:
                cls.build_network("reference", filters=None, share_encoder=None)
            # a U-Net method: the reference stands in for LCKDNet only; RFNet, mmFormer: their one preset
            own = cls.presets != tuple(PRESETS)
            expected = f"builds network preset {list(cls.presets)} only" if own else "stands in for LCKDNet only"
            assert expected in str(info.value) and "\n" not in str(info.value)
    assert network_class("ReferenceLCKDNet") is ReferenceLCKDNet
    assert {m for m, c in METHODS.items() if ReferenceLCKDNet in c.other_networks} == {"lckd", "lckd_nokd", "all4"}
