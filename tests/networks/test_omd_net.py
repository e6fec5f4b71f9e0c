"""OMDNet: restoration for every subset, shared translation block, sweep == forwards, training outputs, validation."""

from __future__ import annotations

import json

import pytest
import torch

from lckd_med.constants import NUM_MODALITIES, NUM_REGIONS, SUBSET_NAMES, subset_to_mask
from lckd_med.engines.checkpoint import build_network
from lckd_med.networks import LCKDNet, MissingModalityNet, SegmentationNetwork
from lckd_med.networks.omd_net import CrossTranslation, ModalityRestoration, OMDFusion, OMDNet, OMDOutput

pytestmark = pytest.mark.usefixtures("one_thread")

FILTERS = (4, 8, 16)
SIZE = 16
ALL_MASKS = torch.tensor([subset_to_mask(s).tolist() for s in SUBSET_NAMES])  # (15, 4), canonical order


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return OMDNet(filters=FILTERS).eval()


@pytest.fixture(scope="module")
def x():
    torch.manual_seed(1)
    return torch.randn(2, NUM_MODALITIES, SIZE, SIZE, SIZE)


@pytest.mark.parametrize("subset", SUBSET_NAMES)
def test_restoration_shapes_and_inputs_for_every_subset(net, x, subset):
    """Every level comes back complete; available slots untouched; missing slots ignore what the input held."""
    mask = torch.from_numpy(subset_to_mask(subset)).expand(2, -1)
    with torch.no_grad():
        features = net.encode(x)
        complete = net.restore(features, mask)
        garbage = [f.clone() for f in features]
        for g in garbage:
            g[:, ~mask[0]] = torch.randn_like(g[:, ~mask[0]]) * 5
        complete_garbage = net.restore(garbage, mask)
    assert len(complete) == len(FILTERS)
    for level, (f, z, zg) in enumerate(zip(features, complete, complete_garbage, strict=True)):
        size = SIZE // 2**level
        assert z.shape == (2, NUM_MODALITIES, FILTERS[level], size, size, size), (subset, level)
        assert torch.equal(z[:, mask[0]], f[:, mask[0]]), "available features must pass through unchanged"
        torch.testing.assert_close(zg, z, rtol=0, atol=1e-6, msg=f"{subset}: restoration read a missing slot")
        if not bool(mask.all()):
            assert not torch.allclose(z[:, ~mask[0]], f[:, ~mask[0]]), "missing slots must be restored"
            assert torch.isfinite(z).all()
        # only the missing slots are computed, yet the result is that of the full (all slots) restoration
        block = net.fusions[level].restore
        with torch.no_grad():
            full = torch.where(mask.view(2, NUM_MODALITIES, 1, 1, 1, 1), f, block.predict(f, mask))
        torch.testing.assert_close(z, full, rtol=1e-5, atol=1e-6)


def test_restoration_modules_are_separate_per_target_modality():
    """Changing the parameters of target modality m's module changes m's restoration only."""
    torch.manual_seed(2)
    block = ModalityRestoration(channels=3, num_modalities=NUM_MODALITIES, kernel_size=3)
    features = torch.randn(1, NUM_MODALITIES, 3, 6, 6, 6)
    mask = torch.tensor([[True, False, False, False]])
    with torch.no_grad():
        before = block.predict(features, mask)
        target = 2
        block.hidden.conv.weight[target * 3 : (target + 1) * 3] += 1.0
        block.out.conv.weight[target * 3 : (target + 1) * 3] += 1.0
        after = block.predict(features, mask)
    changed = [not torch.allclose(before[:, m], after[:, m]) for m in range(NUM_MODALITIES)]
    assert changed == [m == target for m in range(NUM_MODALITIES)]


def test_translation_block_is_one_set_of_parameters_shared_by_modalities():
    torch.manual_seed(3)
    # one block per level, whose size does not depend on the number of modalities
    four, two = OMDNet(filters=FILTERS), OMDNet(in_modalities=2, filters=FILTERS)
    for level in range(len(FILTERS)):
        t4, t2 = four.fusions[level].translate, two.fusions[level].translate
        assert isinstance(t4, CrossTranslation)
        assert [p.shape for p in t4.parameters()] == [p.shape for p in t2.parameters()]
    translation_params = {id(p) for f in four.fusions for p in f.translate.parameters()}
    assert len(translation_params) == sum(len(list(f.translate.parameters())) for f in four.fusions)
    # the same block is applied to every slot: permuting slots (with their flags) leaves the output unchanged
    block = CrossTranslation(channels=5)
    feats = torch.randn(2, NUM_MODALITIES, 5, 4, 4, 4)
    restored = torch.tensor([[False, True, False, True], [True, False, False, False]])
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        out = block(feats, restored)
        out_perm = block(feats[:, perm], restored[:, perm])
    assert out.shape == (2, 5, 4, 4, 4)
    torch.testing.assert_close(out_perm, out, rtol=1e-5, atol=1e-5)
    # every modality slot sends gradient into the one block
    for m in range(NUM_MODALITIES):
        block.zero_grad()
        probe = feats.clone().requires_grad_(True)
        block(probe, restored).sum().backward()
        assert probe.grad[:, m].abs().sum() > 0
    assert all(p.grad is not None for p in block.parameters())


def test_training_forward_gives_both_paths(x):
    torch.manual_seed(4)
    net = OMDNet(filters=FILTERS).train()
    available = torch.ones(2, NUM_MODALITIES, dtype=torch.bool)
    mask = torch.tensor([[True, False, True, False], [False, False, False, True]])
    out = net(x, mask, available=available)
    assert isinstance(out, OMDOutput)
    assert out.logits.shape == out.logits_real.shape == (2, NUM_REGIONS, SIZE, SIZE, SIZE)
    assert torch.equal(out.dropped, available & ~mask)
    for level, (z, f) in enumerate(zip(out.restored, out.real, strict=True)):
        assert z.shape == f.shape == (2, NUM_MODALITIES, FILTERS[level], *(SIZE // 2**level,) * 3)
    net.eval()
    with torch.no_grad():
        out = net(x, mask, available=available)
        torch.testing.assert_close(out.logits, net(x, mask), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out.logits_real, net(x, available), rtol=1e-4, atol=1e-4)
        same = net(x, available, available=available)  # nothing dropped: one path
    assert same.logits is same.logits_real and not bool(same.dropped.any())


def test_deep_supervision_outputs_lists_for_both_paths(x):
    net = OMDNet(filters=(4, 8, 16, 32), deep_supervision=True).train()
    mask = torch.tensor([[True, False, False, False]] * 2)
    out = net(x, mask, available=torch.ones(2, 4, dtype=torch.bool))
    assert isinstance(out.logits, list) and isinstance(out.logits_real, list)
    assert [t.shape[-1] for t in out.logits] == [t.shape[-1] for t in out.logits_real] == [16, 8, 4]


def test_batch_one_with_a_1x1x1_bottleneck():
    net = OMDNet(filters=(2, 4, 4, 4, 4)).train()
    out = net(torch.randn(1, 4, 16, 16, 16), torch.tensor([True, False, False, True]))
    assert out.shape == (1, 3, 16, 16, 16) and torch.isfinite(out).all()


def test_hparams_round_trip_and_checkpoint_registry(net):
    hp = json.loads(json.dumps(net.hparams))
    assert hp["restore_kernel_size"] == [3, 3, 3] and hp["translate_kernel_size"] == [1, 1, 1]
    rebuilt = OMDNet.from_hparams(hp)
    assert type(rebuilt) is OMDNet and rebuilt.hparams == net.hparams
    ckpt = {"network": {"name": "OMDNet", "hparams": hp}, "model": net.state_dict()}
    loaded = build_network(ckpt)
    x = torch.randn(1, 4, SIZE, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), net(x))
    # composed from the shared parts, not a subclass of LCKDNet; satisfies the declared network interface
    assert isinstance(net, MissingModalityNet) and not isinstance(net, LCKDNet)
    assert isinstance(net, SegmentationNetwork)
    # an old checkpoint (decoder parts at the top level) still loads
    legacy = {k.removeprefix("decoder."): v for k, v in net.state_dict().items()}
    assert any(k.startswith("up_blocks.") for k in legacy)
    fresh = OMDNet.from_hparams(hp)
    fresh.load_state_dict(legacy)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), net(x))


@pytest.mark.parametrize(
    "factory, error",
    [
        (lambda: OMDNet(restore_kernel_size=2), ValueError),
        (lambda: OMDNet(restore_kernel_size="3"), ValueError),
        (lambda: OMDNet(translate_kernel_size=0), ValueError),
        (lambda: OMDNet(translate_kernel_size=(1, 1)), ValueError),
        (lambda: OMDNet(filters=(4,)), ValueError),
        (lambda: ModalityRestoration(channels=0), ValueError),
        (lambda: ModalityRestoration(channels=4, num_modalities=0), ValueError),
        (lambda: ModalityRestoration(channels=4, kernel_size=4), ValueError),
        (lambda: ModalityRestoration(channels=4, norm=3), TypeError),
        (lambda: ModalityRestoration(channels=4, act=("leakyrelu",)), TypeError),
        (lambda: CrossTranslation(channels=True), ValueError),
        (lambda: CrossTranslation(channels=4, kernel_size=-1), ValueError),
        (lambda: CrossTranslation(channels=4, norm=None), TypeError),
        (lambda: OMDFusion(channels=-1), ValueError),
        (lambda: OMDFusion(channels=4, num_modalities=1.5), ValueError),
        (lambda: OMDNet.from_hparams({"filters": [4, 8], "mean_fill": True}), ValueError),
        (lambda: OMDNet.from_hparams([("filters", [4, 8])]), TypeError),
        (lambda: OMDNet(filters=(4, 8), fill_levels="bottleneck"), ValueError),
    ],
    ids=[
        "restore_kernel_even",
        "restore_kernel_str",
        "translate_kernel_zero",
        "translate_kernel_len2",
        "one_level",
        "restoration_channels",
        "restoration_modalities",
        "restoration_kernel",
        "restoration_norm",
        "restoration_act",
        "translation_channels_bool",
        "translation_kernel",
        "translation_norm",
        "fusion_channels",
        "fusion_modalities",
        "hparams_unknown_key",
        "hparams_not_mapping",
        "fill_levels_bottleneck",
    ],
)
def test_bad_arguments(factory, error):
    with pytest.raises(error):
        factory()


@pytest.mark.parametrize(
    "call, error",
    [
        (
            lambda n, x: n(x, torch.tensor([True, True, False, False]), available=torch.tensor([True, False] * 2)),
            ValueError,
        ),
        (lambda n, x: n(x, available=torch.zeros(4, dtype=torch.bool)), ValueError),
        (lambda n, x: n(x, available=torch.ones(4)), TypeError),
        (lambda n, x: n.restore(n.encode(x), torch.zeros(4, dtype=torch.bool)), ValueError),
        (lambda n, x: n.fusions[0].restore(torch.randn(1, 3, 4, 2, 2, 2), torch.ones(3, dtype=torch.bool)), ValueError),
        (
            lambda n, x: n.fusions[0].translate(torch.randn(1, 4, 5, 2, 2, 2), torch.zeros(4, dtype=torch.bool)),
            ValueError,
        ),
        (lambda n, x: n.fusions[0].translate(torch.randn(1, 4, 4, 2, 2, 2), torch.zeros(4)), TypeError),
    ],
    ids=[
        "mask_not_subset",
        "nothing_available",
        "float_available",
        "empty_mask",
        "wrong_modalities",
        "wrong_channels",
        "float_flags",
    ],
)
def test_bad_inputs(net, x, call, error):
    with pytest.raises(error):
        call(net, x)


def test_lean_stem_sweep_equals_forwards():
    """OMD with a strided stem and full-resolution head: one encoding + 15 decodes == 15 forwards."""
    torch.manual_seed(0)
    net = OMDNet(filters=(4, 8, 8), strides=((2, 2, 1), 2, 2), head_filters=4).eval()
    assert net.fill_levels == "all"
    x = torch.randn(1, 4, 16, 16, 8)
    masks = torch.stack([torch.from_numpy(subset_to_mask(s)) for s in SUBSET_NAMES])
    with torch.no_grad():
        sweep = net.decode_subsets(net.encode(x), masks)
        for k in range(len(SUBSET_NAMES)):
            torch.testing.assert_close(
                sweep[:, k], net(x * masks[k].view(1, 4, 1, 1, 1), masks[k]), atol=1e-5, rtol=1e-5
            )


def test_only_samples_missing_a_modality_are_restored():
    """A batch mixing a complete sample and an incomplete one: the same features as restoring both (per-sample
    normalisation), and the restoration modules see only the incomplete sample (fewer FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(3)
    block = ModalityRestoration(channels=4, num_modalities=NUM_MODALITIES)
    features = torch.randn(2, NUM_MODALITIES, 4, 6, 6, 6)
    mask = torch.tensor([[True, True, True, True], [True, False, True, False]])
    with torch.no_grad():
        out = block(features, mask)
        full = torch.where(mask.view(2, 4, 1, 1, 1, 1), features, block.predict(features, mask))
        torch.testing.assert_close(out, full, rtol=1e-5, atol=1e-6)
        assert torch.equal(out[0], features[0])
        assert block(features, torch.ones(2, 4, dtype=torch.bool)) is features  # nothing to restore
        counts = []
        for m in (mask, torch.tensor([[True, False, True, False]] * 2)):
            with FlopCounterMode(display=False) as counter:
                block(features, m)
            counts.append(counter.get_total_flops())
    assert counts[0] * 2 == counts[1]


def test_restore_levels_bottleneck_restores_the_bottleneck_only():
    torch.manual_seed(0)
    net = OMDNet(filters=FILTERS, restore_levels="bottleneck").eval()
    assert net.fusions.restored_levels == [len(FILTERS) - 1] and net.hparams["restore_levels"] == "bottleneck"
    assert all(f.restore is None for f in list(net.fusions)[:-1])
    assert OMDNet.from_hparams(json.loads(json.dumps(net.hparams))).hparams == net.hparams
    x = torch.randn(1, NUM_MODALITIES, SIZE, SIZE, SIZE)
    mask = torch.tensor([[True, False, True, False]])
    with torch.no_grad():
        features = net.encode(x)
        complete = net.restore(features, mask)
        # skip levels: the mean of the available slots; bottleneck: a restoration
        mean = features[0][:, mask[0]].mean(dim=1)
        torch.testing.assert_close(complete[0][:, 1], mean)
        assert not torch.allclose(complete[-1][:, 1], features[-1][:, mask[0]].mean(dim=1))
        sweep = net.decode_subsets(features, ALL_MASKS)
        for k in range(len(SUBSET_NAMES)):
            torch.testing.assert_close(sweep[:, k], net(x, ALL_MASKS[k][None]), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="restore_levels"):
        OMDNet(filters=FILTERS, restore_levels="skips")


def test_checkpoints_without_restore_levels_restore_every_level():
    """Release 0.3.0 saved no restore_levels: every level restored, as the default."""
    net = OMDNet(filters=FILTERS)
    old = {k: v for k, v in net.hparams.items() if k != "restore_levels"}
    assert OMDNet.complete_hparams(old) == net.hparams
    assert OMDNet.from_hparams(old).fusions.restored_levels == list(range(len(FILTERS)))
