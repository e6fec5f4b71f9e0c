"""The lckd bundle's defaults reproduce the LCKD reference recipe item by item (REFERENCE.md, docs/reproduce.md).

Each test parses ``bundles/lckd/train.json`` with MONAI's ConfigParser (only the item under test is instantiated; a
heavy dependency such as the network is replaced by a small stand-in) and checks the default against the reference
formula written out on a constructed case, so a drifting default fails here.
"""

from __future__ import annotations

import math
from itertools import combinations
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser

from lckd_med.constants import MODALITIES, subset_to_mask
from lckd_med.data.transforms import drop_modalities_batch
from lckd_med.engines.workflow import bundle_dir

BUNDLE = Path(bundle_dir("lckd"))


def _parser(overrides: dict | None = None) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "train.json"))
    for key, value in (overrides or {}).items():
        parser[key] = value
    return parser


def test_kd_is_the_sum_over_teacher_student_pairs_of_batch_mean_l1():
    kd = _parser().get_parsed_content("kd_loss")
    torch.manual_seed(0)
    feats = torch.randn(2, 4, 3, 2, 2, 2)  # (B, M, C, *S), modality order
    teachers = ["flair", "t1ce"]
    mask = torch.ones(2, 4, dtype=torch.bool)  # phase 1: all sequences
    expected = sum(
        F.l1_loss(feats[:, s], feats[:, MODALITIES.index(t)].detach()) for t in teachers for s in range(4)
    )  # 2 teachers x 4 present students (the self pair adds 0)
    torch.testing.assert_close(kd(feats, mask, teachers), expected)
    assert _parser().get_parsed_content("kd_weight") == pytest.approx(0.1)


def test_seg_loss_is_mean_soft_dice_plus_sum_of_three_channel_bces():
    loss = _parser().get_parsed_content("seg_loss")
    torch.manual_seed(1)
    logits, target = torch.randn(2, 3, 6, 6, 6), (torch.rand(2, 3, 6, 6, 6) > 0.6).float()
    bce_sum = sum(F.binary_cross_entropy_with_logits(logits[:, c], target[:, c]) for c in range(3))
    # Dice alone (checked against MONAI in tests/losses): the total minus it must be the SUM of the 3 BCEs
    torch.testing.assert_close(loss(logits, target) - loss.lambda_dice * loss.dice(logits, target), bce_sum)


def test_phase2_dropout_is_once_per_batch_k_uniform_then_a_subset_of_size_k():
    dropout = _parser().get_parsed_content("train#modality_dropout")
    dropout.set_random_state(seed=0)
    n = 6000
    kept = []
    for _ in range(n):
        _, masks = drop_modalities_batch(torch.ones(2, 4, 1), torch.ones(2, 4, dtype=torch.bool), dropout)
        assert torch.equal(masks[0], masks[1]), "one draw per batch"
        kept.append(tuple(masks[0].tolist()))
    for k in (1, 2, 3):  # k = randint(1, 3): each size 1/3
        freq = sum(sum(m) == k for m in kept) / n
        assert abs(freq - 1 / 3) < 4 * math.sqrt(2 / 9 / n), (k, freq)
        for combo in combinations(MODALITIES, k):  # then uniform among the C(4, k) subsets of that size
            p = 1 / 3 / math.comb(4, k)
            freq = kept.count(tuple(subset_to_mask(list(combo)).tolist())) / n
            assert abs(freq - p) < 4 * math.sqrt(p * (1 - p) / n), (combo, freq, p)


def _lr_at(iterations: list[int]) -> dict[int, float]:
    """LR used by 1-based training iteration ``i`` (the scheduler steps after every iteration)."""
    parser = _parser({"optimizer": "$torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=@learning_rate)"})
    scheduler = parser.get_parsed_content("lr_scheduler")
    optimizer = scheduler.optimizer
    out, wanted = {}, set(iterations)
    for i in range(1, max(iterations) + 1):
        if i in wanted:
            out[i] = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
    return out


def test_lr_is_phase1_poly_to_zero_then_the_115k_poly_from_80k():
    lr0, p = 1e-2, 0.9
    expected = {
        1: lr0,  # reference i_iter = 0
        40000: lr0 * (1 - 39999 / 80000) ** p,
        80000: lr0 * (1 - 79999 / 80000) ** p,  # phase 1 ends at ~0
        80001: lr0 * (1 - 80000 / 115000) ** p,  # phase 2: the 115k poly evaluated from 80k (0.343 lr0)
        115000: lr0 * (1 - 114999 / 115000) ** p,
    }
    got = _lr_at(list(expected))
    for i, lr in expected.items():
        assert got[i] == pytest.approx(lr, rel=1e-9, abs=1e-15), i


def test_optimizer_is_sgd_nesterov_momentum_099_without_weight_decay():
    optimizer = _parser({"network": "$torch.nn.Linear(2, 2)"}).get_parsed_content("optimizer")
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.SGD)
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (1e-2, 0.99, True, 0.0)


def test_first_election_after_iteration_one_then_every_5000_with_no_prior_teacher():
    parser = _parser({"validate#dataloader": "$[]"})
    election = parser.get_parsed_content("validate#election")
    due = [i for i in range(1, 20002) if election._due(None, i)]
    assert due == [1, 5001, 10001, 15001, 20001]  # the reference's 0-based i_iter % 5000 == 0
    assert parser.get_parsed_content("teacher_state").teachers == []
    assert election.score == "soft"  # the reference's dice_score on probabilities


def test_sliding_window_is_one_third_overlap_uniform_blend():
    election = _parser({"validate#dataloader": "$[]"}).get_parsed_content("validate#election")
    assert (round(election.overlap, 4), election.mode) == (0.3333, "constant")
    evaluate = ConfigParser()
    evaluate.read_config(str(BUNDLE / "evaluate.json"))
    assert (evaluate["sw_mode"], evaluate["hd95_method"]) == (None, "pooled")
    # null: the checkpoint's recorded window settings (an imported published model's), else the project's defaults
    assert (evaluate["sw_overlap"], evaluate["sw_average"]) == (None, None)
    from lckd_med.inference.segmenter import Segmenter
    from tests.testkit import checkpoint_payload, tiny_lckd_net

    seg = Segmenter(checkpoint_payload(tiny_lckd_net(), train_config={"roi_size": [16, 16, 16]}), device="cpu")
    assert (round(seg.overlap, 4), seg.mode, seg.average, seg.decision) == (0.3333, "constant", "logits", "threshold")


def test_crop_batch_and_iterations_are_the_reference():
    parser = _parser()
    assert sorted(parser["roi_size"]) == [80, 160, 160] and parser["batch_size"] == 2
    assert (parser["phase1_iterations"], parser["num_iterations"], parser["election_interval"]) == (80000, 115000, 5000)


def test_dice_smoothing_is_one_in_the_denominator():
    """loss_Dual.py: per sample and channel 2 sum(p g) / (sum p + sum g + 1), 1 - the mean over samples, averaged
    over the 3 channels (the BCE part is pinned above)."""
    loss = _parser().get_parsed_content("seg_loss")
    torch.manual_seed(2)
    logits, target = torch.randn(2, 3, 4, 4, 4), (torch.rand(2, 3, 4, 4, 4) > 0.7).float()
    p = torch.sigmoid(logits).flatten(2)
    dice = 2 * (p * target.flatten(2)).sum(2) / (p.sum(2) + target.flatten(2).sum(2) + 1)
    torch.testing.assert_close(loss.dice(logits, target), (1 - dice.mean(0)).mean())


def test_precision_is_fp32_and_fast_json_the_bf16_option():
    assert _parser()["amp"] is False
    for name in ("evaluate.json", "inference.json"):
        parser = ConfigParser()
        parser.read_config(str(BUNDLE / name))
        assert parser["amp"] is False, name
    fast = ConfigParser()
    fast.read_config([str(BUNDLE / "train.json"), str(BUNDLE / "fast.json")])
    assert fast["amp"] is True


def test_data_pipeline_defaults_are_the_references_and_the_demo_keeps_the_light_one():
    parser = _parser()
    assert (parser["intensity"], parser["crop_sampling"], parser["augmentation"]) == ("reference",) * 3
    demo = ConfigParser()
    demo.read_config([str(BUNDLE / "train.json"), str(BUNDLE / "demo.json")])
    assert (demo["intensity"], demo["crop_sampling"], demo["augmentation"]) == ("brainbox", "posneg", "light")
    assert demo["dice_smooth_dr"] == 1e-5  # the demo runs what its documented figures were measured with
    # the training recipe records the normalisation for evaluation and inference
    recipe = _parser({"label_convention": "brats2018", "train_spacing": None}).get_parsed_content("train_recipe")
    assert (recipe["intensity"], recipe["augmentation"], recipe["crop_sampling"], recipe["amp"]) == (
        "reference",
        "reference",
        "reference",
        False,
    )


def _exact() -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "train.json"), str(BUNDLE / "reference_exact.json")])
    return parser


def test_reference_exact_overlay_gathers_the_small_items():
    parser = _exact()
    # 80,000 phase-1 steps, then the reference's phase-2 run from its repeated index i_iter 79999 (up to 114998)
    assert (parser["phase1_iterations"], parser["num_iterations"], parser["phase2_overlap"]) == (80000, 115000, 1)
    parser["optimizer"] = "$torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=@learning_rate)"
    scheduler = parser.get_parsed_content("lr_scheduler")
    lrs = {}
    for i in (80000, 80001, 115000):  # engine iteration i trains with the closed-form LR of step i - 1
        scheduler.last_epoch = i - 1
        lrs[i] = scheduler._get_closed_form_lr()[0]
    assert lrs[80000] == pytest.approx(1e-2 * (1 - 79999 / 80000) ** 0.9)
    assert lrs[80001] == pytest.approx(1e-2 * (1 - 79999 / 115000) ** 0.9)  # the repeated index 79999
    assert lrs[115000] == pytest.approx(1e-2 * (1 - 114998 / 115000) ** 0.9)
    parser["validate#dataloader"] = "$[]"
    election = parser.get_parsed_content("validate#election")
    due = [i for i in range(1, 90000) if election._due(None, i)]
    # after the reference's i_iter 0, 5000, ..., 75000 (phase 1), then 80000, 85000 (its phase-2 run)
    assert due[:2] == [1, 5001] and due[-3:] == [75001, 80002, 85002]
    assert election.reset_iteration == 80001
    assert parser.get_parsed_content("teacher_state").teachers == ["flair"]  # its --teachers default '0'
    assert parser["network_preset"] == "reference"
    for name in ("evaluate.json", "inference.json"):
        other = ConfigParser()
        other.read_config([str(BUNDLE / name), str(BUNDLE / "reference_exact.json")])
        assert (other["sw_average"], other["postprocess"]) == ("probabilities", "reference"), name
