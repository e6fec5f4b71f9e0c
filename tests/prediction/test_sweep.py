"""Subset sweep: one encoding per window decoded under 15 masks == 15 separate sliding-window forward passes."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference

from lckd_med.constants import NUM_MODALITIES, NUM_REGIONS, SUBSET_NAMES, subset_to_mask
from lckd_med.networks import LCKDNet
from lckd_med.prediction.sweep import SubsetSweepPredictor, autocast_context, subset_masks, sweep_subsets

ROI = (16, 16, 16)
SHAPE = (24, 20, 28)  # larger than the ROI on every axis: windows overlap and get blended


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def net() -> LCKDNet:
    torch.manual_seed(0)
    return LCKDNet(filters=(4, 8, 16)).eval()


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(1, NUM_MODALITIES, *SHAPE)


@pytest.fixture(scope="module")
def swept(net, image) -> torch.Tensor:
    return sweep_subsets(net, image, ROI, amp=False)


def test_subset_masks_canonical_order():
    masks = subset_masks()
    assert masks.shape == (15, NUM_MODALITIES) and masks.dtype == torch.bool
    for k, name in enumerate(SUBSET_NAMES):
        assert masks[k].tolist() == subset_to_mask(name).tolist()
    with pytest.raises(ValueError, match="at least one subset"):
        subset_masks([])


def test_sweep_equals_separate_forward_passes(net, image, swept):
    assert swept.shape == (1, len(SUBSET_NAMES), NUM_REGIONS, *SHAPE) and swept.dtype == torch.float32
    assert type(swept) is torch.Tensor
    for k, name in enumerate(SUBSET_NAMES):
        mask = torch.from_numpy(subset_to_mask(name))
        with torch.no_grad():
            single = sliding_window_inference(
                image * mask[None, :, None, None, None],
                roi_size=ROI,
                sw_batch_size=1,
                predictor=lambda w, m=mask: net(w, m[None].expand(w.shape[0], -1)),
                overlap=1 / 3,
                mode="constant",  # the default blend must be the reference's uniform average
            )
        torch.testing.assert_close(swept[:, k], torch.as_tensor(single), rtol=0, atol=1e-5, msg=name)


def test_sweep_subset_selection_and_order(net, image, swept):
    chosen = ["t2", "flair+t1ce", "flair+t1+t1ce+t2"]
    part = sweep_subsets(net, image, ROI, subsets=chosen, amp=False)
    batched = sweep_subsets(net, image, ROI, subsets=chosen, amp=False, sw_batch_size=3)
    assert part.shape == batched.shape == (1, 3, NUM_REGIONS, *SHAPE)
    for i, name in enumerate(chosen):
        torch.testing.assert_close(part[:, i], swept[:, SUBSET_NAMES.index(name)], rtol=0, atol=1e-5, msg=name)
    # batching windows changes only the round-off of the batched convolutions
    torch.testing.assert_close(batched, part, rtol=0, atol=1e-4)


def test_sweep_returns_plain_tensor_for_meta_tensor_input(net, image, swept):
    out = sweep_subsets(net, MetaTensor(image, affine=torch.eye(4)), ROI, subsets=["t1ce"], amp=False)
    assert type(out) is torch.Tensor
    torch.testing.assert_close(out[:, 0], swept[:, SUBSET_NAMES.index("t1ce")], rtol=0, atol=1e-5)


def test_available_mask_refuses_subsets_needing_absent_sequences(net, image):
    available = torch.tensor([[True, False, True, True]])
    ok = sweep_subsets(net, image, ROI, subsets=["flair+t1ce", "t2"], available=available, amp=False)
    assert ok.shape[1] == 2
    with pytest.raises(ValueError, match=r"sample 0 has only flair\+t1ce\+t2.*\['t1', 'flair\+t1'\]"):
        sweep_subsets(net, image, ROI, subsets=["t1", "flair+t1", "t2"], available=available, amp=False)


@pytest.mark.parametrize(
    "shape", [(1, 3, 16, 16, 16), (4, 16, 16, 16), (1, 4, 16, 16)], ids=["three_channels", "no_batch", "2d"]
)
def test_sweep_rejects_bad_image(net, shape):
    with pytest.raises(ValueError, match="image must have shape"):
        sweep_subsets(net, torch.zeros(shape), ROI)


@pytest.mark.parametrize(
    "masks, match",
    [
        (torch.ones(3, 3, dtype=torch.bool), "shape"),
        (torch.ones(4, dtype=torch.bool), "shape"),
        (torch.tensor([[True, False, False, False], [False] * 4]), "at least one modality"),
    ],
    ids=["three_modalities", "one_dim", "empty_row"],
)
def test_predictor_rejects_bad_masks(net, masks, match):
    with pytest.raises(ValueError, match=match):
        SubsetSweepPredictor(net, masks)


def test_predictor_output_is_subset_major(net):
    torch.manual_seed(2)
    window = torch.randn(2, NUM_MODALITIES, *ROI)
    masks = subset_masks(["t1", "flair+t2"])
    with torch.no_grad():
        out = SubsetSweepPredictor(net, masks, amp=False)(window)
        assert out.shape == (2, 2 * NUM_REGIONS, *ROI)
        torch.testing.assert_close(out[:, 3:], net(window, masks[1].expand(2, -1)), rtol=0, atol=1e-5)


def test_autocast_is_a_no_op_on_cpu():
    with autocast_context("cpu", amp=True):
        assert not torch.is_autocast_enabled("cpu")
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.float32


def test_gaussian_blend_is_an_option_that_changes_the_output(net, image, swept):
    gauss = sweep_subsets(net, image, ROI, subsets=[SUBSET_NAMES[-1]], amp=False, mode="gaussian")
    assert not torch.allclose(gauss[:, 0], swept[:, -1], atol=1e-4)


def test_sweep_rejects_unknown_blend_mode(net, image):
    with pytest.raises(ValueError, match="window blending"):
        sweep_subsets(net, image, ROI, subsets=["t1"], amp=False, mode="average")


def test_probability_averaging_is_the_mean_of_window_sigmoids(net, image, swept):
    """The reference's final inference averages the windows' sigmoids (eval.py), its validation their logits."""
    chosen = ["t1ce", "flair+t1+t1ce+t2"]
    probs = sweep_subsets(net, image, ROI, subsets=chosen, amp=False, average="probabilities")
    masks = subset_masks(chosen)
    with torch.no_grad():
        want = sliding_window_inference(
            image,
            roi_size=ROI,
            sw_batch_size=1,
            predictor=lambda w: torch.sigmoid(SubsetSweepPredictor(net, masks, amp=False)(w)),
            overlap=1 / 3,
            mode="constant",
        ).reshape(1, 2, NUM_REGIONS, *SHAPE)
    torch.testing.assert_close(torch.sigmoid(probs), want, rtol=1e-5, atol=1e-6)
    logits = swept[:, [SUBSET_NAMES.index(s) for s in chosen]]
    assert not torch.allclose(probs, logits, atol=1e-3)  # overlapping windows: the two averages differ
    one = image[..., : ROI[0], : ROI[1], : ROI[2]]  # a single window: nothing is averaged, both agree
    torch.testing.assert_close(
        sweep_subsets(net, one, ROI, subsets=chosen, amp=False, average="probabilities"),
        sweep_subsets(net, one, ROI, subsets=chosen, amp=False),
        rtol=1e-4,
        atol=1e-4,
    )
    with pytest.raises(ValueError, match="average"):
        SubsetSweepPredictor(net, masks, average="median")


def test_a_softmax_network_averages_its_class_probabilities_over_windows(image):
    """A network whose output kind is ``"classes"`` (RFNet): with ``average="probabilities"`` the sweep averages the
    windows' region probabilities, which equals averaging the class probabilities (the published RFNet / mmFormer
    predict); the averaged classes come back exactly from the regions, so their argmax is the published label map."""
    from lckd_med.networks.outputs import class_probabilities
    from tests.testkit import tiny_rfnet

    net = tiny_rfnet(seed=5).eval()
    chosen = ["t2", "flair+t1+t1ce+t2"]
    out = sweep_subsets(net, image, ROI, subsets=chosen, amp=False, average="probabilities")
    assert out.shape == (1, 2, NUM_REGIONS, *SHAPE)
    masks = subset_masks(chosen)

    def softmax_windows(w: torch.Tensor) -> torch.Tensor:  # the published averaging: class probabilities
        feats = net.encode(w)
        return torch.softmax(net.decode_subsets(feats, masks), dim=2).flatten(1, 2)

    with torch.no_grad():
        classes = sliding_window_inference(image, ROI, 1, softmax_windows, overlap=1 / 3, mode="constant")
    classes = classes.reshape(1, 2, 4, *SHAPE)
    torch.testing.assert_close(class_probabilities(torch.sigmoid(out), dim=2), classes, rtol=0, atol=2e-5)
    ties = (classes.topk(2, dim=2).values.diff(dim=2).abs() < 1e-4).squeeze(2)
    same = torch.argmax(class_probabilities(torch.sigmoid(out), dim=2), dim=2) == torch.argmax(classes, dim=2)
    assert bool((same | ties).all())


@pytest.mark.parametrize(
    "size, roi", [(128, 80), (129, 80), (155, 80), (160, 80), (240, 80), (128, 128), (155, 128), (240, 128)]
)
def test_monai_windows_at_overlap_half_are_the_published_ones(size, roi):
    """RFNet's and mmFormer's predict (predict.py:155-168 in both): windows start at 0, roi/2, 2 roi/2, ...
    (ceil((n - roi) / (roi / 2)) of them) and at n - roi. MONAI's sliding window with overlap 0.5 takes the same
    starts, so a recorded overlap of 0.5 reproduces the published grid (and uniform blending its averaging)."""
    import math

    published = [i * int(roi * (1 - 0.5)) for i in range(math.ceil((size - roi) / (roi * (1 - 0.5))))] + [size - roi]
    starts: list[int] = []

    def record(window: torch.Tensor) -> torch.Tensor:
        starts.extend(int(v) for v in window[:, 0, 0, 0, 0])
        return window[:, :1].clone()

    coords = torch.arange(size, dtype=torch.float32).view(1, 1, size, 1, 1).expand(1, 1, size, 4, 4).clone()
    sliding_window_inference(coords, (roi, 4, 4), 1, record, overlap=0.5, mode="constant")
    assert sorted(set(starts)) == sorted(set(published))
