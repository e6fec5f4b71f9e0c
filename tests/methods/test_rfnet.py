"""RFNet as a method: its registry line, its published loss arithmetic and fused-term schedule, its targets, the
published mask sampling, and its bundle: a tiny training run then the 15-subset evaluation of the checkpoint.

Training on the one trainer, the encode-once sweep and checkpoints are covered for every registered method in
``test_registry.py``; the network itself in ``tests/networks/test_rfnet.py``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from lckd_med.constants import SUBSET_NAMES, mask_to_subset
from lckd_med.data.synthetic import write_dataset
from lckd_med.data.transforms import drop_modalities_batch
from lckd_med.engines.checkpoint import load_checkpoint
from lckd_med.engines.workflow import bundle_dir
from lckd_med.inference.subset_dice import SUBSET_DICE_NAME
from lckd_med.losses import regions_to_classes, segmentation_loss
from lckd_med.methods import METHODS, TrainBatch, build_method
from lckd_med.methods.rfnet import RFNET_FUSION_START_ITERATION, RFNetMethod
from lckd_med.networks.rfnet import PUBLISHED_RECIPE, RFNet
from lckd_med.reports import REPORT_FILES
from tests.testkit import PUBLISHED_WINDOW, brats_label_batch, published_softmax_losses, run_bundle, tiny_method_network

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 8


def test_registered_with_the_published_network_and_threshold():
    assert METHODS["rfnet"] is RFNetMethod and RFNetMethod.label == "RFNet" and RFNetMethod.network_class is RFNet
    training = PUBLISHED_RECIPE["training"]
    # the published epoch threshold in iterations: 20 epochs x 150 iterations (job.sh)
    assert RFNET_FUSION_START_ITERATION == 3000
    assert training["region_fusion_start_epoch"] * training["iterations_per_epoch"] == 3000
    assert RFNetMethod().fusion_start_iteration == 3000
    assert RFNetMethod.presets == ("published",) and RFNetMethod.default_preset == "published"
    assert type(RFNetMethod.build_network()) is RFNet  # the published network (tests/networks/test_rfnet.py)


@pytest.mark.parametrize("label, cls", [(0, 0), (1, 1), (2, 2), (4, 3)])
def test_targets_are_the_published_classes(label, cls):
    """Label 4 -> class 3 (preprocess.py:73), from this project's region targets."""
    labels, regions = brats_label_batch(1, 4)
    classes = regions_to_classes(regions)
    assert classes.shape == (1, 1, 4, 4, 4) and classes.dtype == torch.int64
    assert bool((classes[labels == label] == cls).all()) and bool((labels == label).any())


@pytest.mark.parametrize("bad", [torch.zeros(1, 4, 2, 2, 2), torch.zeros(3, 2, 2), "x"])
def test_targets_refuse_a_non_region_tensor(bad):
    with pytest.raises(ValueError, match=r"region targets must be \(B, 3"):
        regions_to_classes(bad)


def _batch(iteration: int) -> tuple[TrainBatch, torch.Tensor]:
    torch.manual_seed(3)
    image = torch.randn(2, 4, SIZE, SIZE, SIZE)
    labels, regions = brats_label_batch(2, SIZE, seed=1)
    mask = torch.tensor([[True, False, True, False], [False, False, False, True]])
    dropped = torch.full_like(image, float("nan"))  # never read: the published input keeps every sequence
    return TrainBatch(image, dropped, regions, torch.ones_like(mask), mask, iteration), labels


@pytest.mark.parametrize("iteration, fused_weight", [(0, 0.0), (1, 0.0), (3000, 0.0), (3001, 1.0), (45000, 1.0)])
def test_loss_is_the_published_arithmetic(iteration, fused_weight):
    """fused (weight 0 up to iteration 3000 = epoch 19) + sum of the 4 separate decoders + sum of the 4 region maps,
    each softmax weighted CE + Dice (train.py:165-187), recomputed from the network's outputs."""
    net = tiny_method_network("rfnet")
    method = build_method("rfnet")
    method.bind(net, segmentation_loss())
    batch, labels = _batch(iteration)
    loss, pred, terms = method.compute_loss(batch, phase=2)
    torch.manual_seed(0)
    out = net(batch.image, batch.mask, return_aux=True)
    assert len(out.sep_logits) == 4 and len(out.region_probs) == 3  # one per modality, one per level
    fuse, sep, aux = published_softmax_losses(out.logits, out.sep_logits, out.region_probs, labels)
    assert terms["fuse_loss"].item() == pytest.approx(fuse, rel=1e-5)
    assert terms["sep_loss"].item() == pytest.approx(sep, rel=1e-5)
    assert terms["aux_loss"].item() == pytest.approx(aux, rel=1e-5)
    assert loss.item() == pytest.approx(fused_weight * fuse + sep + aux, rel=1e-5)
    torch.testing.assert_close(pred, out.logits)
    loss.backward()  # the fused head learns only from the fused term: no gradient while its weight is 0
    assert bool(net.decoder.head.weight.grad.abs().sum() > 0) == bool(fused_weight)


@pytest.mark.parametrize("value", [-1, 1.5, True, "3000", None])
def test_fusion_start_iteration_must_be_a_whole_number(value):
    with pytest.raises(ValueError, match="fusion_start_iteration must be an int >= 0"):
        RFNetMethod(fusion_start_iteration=value)


@pytest.mark.parametrize("preset", ["lean", "fullres", "reference"])
def test_only_the_published_preset(preset):
    with pytest.raises(ValueError, match=r"RFNet builds network preset \['published'\] only"):
        RFNetMethod.build_network(preset)


@pytest.mark.parametrize("bundle", ["rfnet", "mmformer"])
def test_bundle_draws_one_of_the_15_subsets_uniformly_per_sample(bundle):
    """The published mask sampling (RFNet datasets_nii.py:24-26,78-79; mmFormer data/datasets_nii.py:98-99), from
    the bundle's own dropout settings: every sample its own subset, each of the 15 with probability 1/15."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(Path(bundle_dir(b)) / "train.json") for b in ("lckd", bundle)])
    assert parser["phase1_iterations"] == 0  # from the first iteration
    assert parser["intensity"] == "published"  # their preprocess.py (lckd_med.data.intensity)
    dropout = parser.get_parsed_content("train#modality_dropout")
    dropout.set_random_state(0)
    n = 6000
    _, kept = drop_modalities_batch(torch.zeros(n, 4, 1, 1, 1), torch.ones(n, 4, dtype=torch.bool), dropout)
    counts = pd.Series([mask_to_subset(m) for m in kept.numpy()]).value_counts()
    assert set(counts.index) == set(SUBSET_NAMES)
    assert counts.min() > n / 15 * 0.85 and counts.max() < n / 15 * 1.15


@pytest.fixture(scope="module")
def rfnet_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rfnet_bundle")
    write_dataset(root / "data", 5, seed=3, spacing=4.0, release=2018, lgg_fraction=0.2)
    return root


@pytest.mark.slow
def test_tiny_training_then_the_15_subset_evaluation(rfnet_run):
    """The real bundle at tiny size: 3 iterations with the fused term off for the first 2, then evaluate. The
    bundle's published normalisation widens the brain box to 128 voxels per axis (tests/data/test_intensity.py):
    here the brain-box one keeps the 4 mm volumes small."""
    root = rfnet_run
    common = [
        "--dataset_dir",
        str(root / "data"),
        "--output_dir",
        str(root / "out"),
        "--ckpt_dir",
        str(root / "models"),
    ]
    log = run_bundle(
        "training", "rfnet", *common,
        "--filters", "[4,8,16]", "--fusion_hidden", "8", "--region_hidden", "4", "--roi_size", "[32,32,32]",
        "--num_iterations", "3", "--epoch_length", "1", "--fusion_start_iteration", "2", "--num_workers", "0",
        "--log_every", "1", "--intensity", "brainbox",
        cwd=root,
    )  # fmt: skip
    values = {int(i): [float(v) for v in re.findall(r"[\d.]+", line)] for i, line in _terms(log).items()}
    assert sorted(values) == [1, 2, 3], log[-2000:]
    for it, (loss, fuse, sep, aux) in values.items():
        assert loss == pytest.approx((it > 2) * fuse + sep + aux, abs=2e-4), (it, values)
    ckpt = load_checkpoint(root / "models" / "model.pt")
    assert (ckpt["method"], ckpt["network"]["name"], ckpt["iteration"]) == ("rfnet", "RFNet", 3)
    # the published sliding window (predict.py:131-190), applied by evaluation and inference
    assert ckpt["inference"] == PUBLISHED_WINDOW | {"roi_size": [32, 32, 32]}
    assert ckpt["network"]["hparams"]["filters"] == [4, 8, 16] and ckpt["method_state"] == {}
    config = ckpt["train_config"]
    assert (config["optimizer"], config["amsgrad"], config["lr_schedule"], config["fusion_start_iteration"]) == (
        "adam",
        True,
        "epoch_poly",
        2,
    )

    run_bundle("evaluate", "rfnet", *common, "--max_cases", "1", cwd=root)
    for name in REPORT_FILES.values():
        assert (root / "out" / name).is_file(), name
    summary = pd.read_csv(root / "out" / REPORT_FILES["summary_csv"])
    assert summary["subset"].tolist() == [*SUBSET_NAMES, "mean"]
    assert set(json.loads((root / "models" / SUBSET_DICE_NAME).read_text())["subset_dice"]) == set(SUBSET_NAMES)


def _terms(log: str) -> dict[int, str]:
    """Iteration -> ``loss fuse_loss sep_loss aux_loss`` values of the progress lines."""
    found = re.findall(r"iter (\d+)/\d+ .*?(loss=[\d.]+ fuse_loss=[\d.]+ sep_loss=[\d.]+ aux_loss=[\d.]+)", log)
    return {int(i): re.sub(r"[a-z_]+=", " ", terms) for i, terms in found}
