from __future__ import annotations

import pytest
import torch

from lckd_med.constants import NUM_MODALITIES
from lckd_med.modalities import ModalitySpec
from lckd_med.networks import LCKDNet
from lckd_med.prediction import SubsetPredictor, resolve_roi_size, sweep_subsets
from lckd_med.prediction.predictor import estimate_sweep_memory
from lckd_med.utils.memory import NotEnoughMemoryError

SHAPE = (24, 24, 16)
ROI = (16, 16, 16)


@pytest.fixture(scope="module")
def net() -> LCKDNet:
    torch.manual_seed(0)
    return LCKDNet(filters=(4, 8, 16)).eval()


def test_predictor_equals_sweep(net):
    torch.manual_seed(1)
    image = torch.randn(1, NUM_MODALITIES, *SHAPE)
    subsets = ["flair", "t1+t2", "flair+t1+t1ce+t2"]
    got = SubsetPredictor(net, ROI, amp=False, device="cpu", output_device="cpu")(image, subsets)
    want = sweep_subsets(net, image, ROI, subsets=subsets, amp=False)
    assert got.shape == (1, 3, 3, *SHAPE)
    torch.testing.assert_close(got, want)


def test_predictor_refuses_missing_sequence(net):
    image = torch.zeros(1, NUM_MODALITIES, *ROI)
    available = torch.tensor([[True, False, False, False]])
    with pytest.raises(ValueError, match="cannot evaluate subsets"):
        SubsetPredictor(net, ROI, amp=False, device="cpu")(image, ["t1"], available=available)


@pytest.mark.parametrize(
    ("roi_size", "ckpt", "want"),
    [
        (16, None, (16, 16, 16)),
        ([16, 32, 16], None, (16, 32, 16)),
        (None, {"train_config": {"roi_size": [32, 16, 16]}}, (32, 16, 16)),
        ((16, 16, 16), {"train_config": {"roi_size": [32, 32, 32]}}, (16, 16, 16)),  # the argument wins
    ],
)
def test_resolve_roi_size(roi_size, ckpt, want, net):
    assert resolve_roi_size(roi_size, ckpt, net) == want


def test_resolve_roi_size_no_fallback():
    with pytest.raises(ValueError, match="model.pt stores no training roi_size"):
        resolve_roi_size(None, {"train_config": {}}, where="model.pt")


@pytest.mark.parametrize("bad", [0, (16, -16, 16), (16.0, 16, 16)])
def test_resolve_roi_size_bad_value(bad):
    with pytest.raises(ValueError, match="positive ints"):
        resolve_roi_size(bad)


@pytest.mark.parametrize("bad", [True, "16"])
def test_resolve_roi_size_bad_type(bad):
    with pytest.raises(TypeError, match="roi_size must be"):
        resolve_roi_size(bad)


def test_resolve_roi_size_not_divisible(net):
    with pytest.raises(ValueError, match="size divisor"):
        resolve_roi_size((10, 16, 16), network=net)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"overlap": 1.0}, "overlap"),
        ({"overlap": -0.1}, "overlap"),
        ({"mode": "mean"}, "blending"),
        ({"sw_batch_size": 0}, "sw_batch_size"),
        ({"device": "gpu"}, "device must be"),
        ({"average": "median"}, "average"),
    ],
)
def test_predictor_bad_args(net, kwargs, match):
    with pytest.raises(ValueError, match=match):
        SubsetPredictor(net, ROI, **kwargs)


def test_resolve_roi_size_of_a_2d_network():
    net2d = LCKDNet(in_modalities=2, in_channels=[3, 1], spatial_dims=2, filters=(4, 8))
    assert resolve_roi_size(16, network=net2d) == (16, 16)
    with pytest.raises(ValueError, match="size divisor"):
        resolve_roi_size((16, 16, 16), network=net2d)


def test_predictor_refuses_a_spec_the_network_does_not_take(net):
    toy = ModalitySpec(["rgb", "depth"], [3, 1], spatial_dims=2)
    with pytest.raises(ValueError, match=r"3-D inputs with channels \[1, 1, 1, 1\].*2-D, \[3, 1\]"):
        SubsetPredictor(net, ROI, device="cpu", modalities=toy)


def test_a_sweep_that_cannot_fit_in_memory_is_refused_with_the_estimate(net, monkeypatch):
    """A window far larger than the image pads the image to the window: estimated and refused before allocating."""
    monkeypatch.setattr("lckd_med.utils.memory.available_memory", lambda device="cpu": 512 * 2**20)
    predictor = SubsetPredictor(net, (512, 512, 512), device="cpu", amp=False)
    image = torch.zeros(1, NUM_MODALITIES, 16, 16, 16)
    with pytest.raises(NotEnoughMemoryError) as info:
        predictor(image, ["flair"])
    message = str(info.value)
    assert "(16, 16, 16) image with a (512, 512, 512) window needs about" in message and "GiB" in message
    assert "only 512.0 MiB are available" in message and "smaller roi_size" in message
    stitching, windows = estimate_sweep_memory((1, 4, 240, 240, 155), (160, 160, 80), 1, net)
    assert 0 < stitching < 1 * 2**30 and 0 < windows < 4 * 2**30  # the bundles' default sweep is not refused
