"""OMD adaptation losses: multi-kernel Gaussian MMD (marginal) and temperature-scaled KL (conditional)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lckd_med.losses import FeatureMMDLoss, MultiKernelMMDLoss, TemperatureKLLoss, gaussian_mmd

torch.set_num_threads(1)


def _samples(n: int = 300, d: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- MMD on samples
@pytest.mark.parametrize("bandwidth", [None, 4.0])
def test_mmd_is_zero_for_identical_samples(bandwidth):
    x = _samples()
    assert float(gaussian_mmd(x, x.clone(), bandwidth=bandwidth)) == pytest.approx(0.0, abs=1e-6)
    assert float(MultiKernelMMDLoss(bandwidth=bandwidth)(x, x.clone())) == pytest.approx(0.0, abs=1e-6)


def test_mmd_is_small_for_two_samples_of_one_distribution():
    assert float(gaussian_mmd(_samples(seed=0), _samples(seed=1))) < 0.02


@pytest.mark.parametrize("bandwidth", [None, 6.0])
def test_mmd_grows_with_a_shift(bandwidth):
    x = _samples(seed=0)
    y = _samples(seed=1)
    values = [float(gaussian_mmd(x, y + shift, bandwidth=bandwidth)) for shift in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)]
    assert all(b > a for a, b in zip(values, values[1:], strict=False)), values
    assert values[-1] > 20 * values[0]
    assert all(0.0 <= v <= 2.0 for v in values)


def test_mmd_is_symmetric_and_differentiable():
    x = _samples(seed=0).requires_grad_(True)
    y = _samples(seed=1) + 1.0
    forward = gaussian_mmd(x, y)
    assert float(forward.detach()) == pytest.approx(float(gaussian_mmd(y, x.detach())), rel=1e-5)
    forward.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_mmd_subsamples_large_sets():
    torch.manual_seed(0)
    loss = MultiKernelMMDLoss(max_samples=64)
    big = _samples(n=5000)
    value = loss(big, big + 2.0)
    assert 0.1 < float(value) <= 2.0


# ---------------------------------------------------------------- MMD on feature maps
def test_feature_mmd_is_zero_when_nothing_is_dropped_or_restoration_is_exact():
    torch.manual_seed(0)
    real = torch.randn(2, 4, 3, 4, 4, 4)
    restored = torch.randn(2, 4, 3, 4, 4, 4, requires_grad=True)
    loss = FeatureMMDLoss()
    none = loss(restored, real, torch.zeros(2, 4, dtype=torch.bool))
    assert float(none.detach()) == 0.0 and none.requires_grad  # an exact zero, still connected to the graph
    dropped = torch.tensor([[False, True, False, False], [False, True, True, False]])
    exact = real.clone()
    assert float(loss(exact, real, dropped)) == pytest.approx(0.0, abs=1e-6)
    # only dropped slots count: garbage in non-dropped slots changes nothing
    exact[:, 0] = 100.0
    assert float(loss(exact, real, dropped)) == pytest.approx(0.0, abs=1e-6)


def test_feature_mmd_grows_with_a_shift_and_treats_real_features_as_targets():
    torch.manual_seed(0)
    real = torch.randn(2, 4, 3, 6, 6, 6, requires_grad=True)
    dropped = torch.tensor([[True, False, False, False], [False, False, False, True]])
    loss = FeatureMMDLoss()
    values = []
    for shift in (0.0, 0.5, 2.0):
        restored = (real.detach() + shift).requires_grad_(True)
        value = loss([restored], [real], dropped)
        values.append(float(value.detach()))
        value.backward()
        assert restored.grad is not None
    assert values[0] == pytest.approx(0.0, abs=1e-6) and values[0] < values[1] < values[2]
    assert real.grad is None  # real features are detached targets


# ---------------------------------------------------------------- KL
@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_kl_is_zero_for_identical_predictions(activation):
    logits = torch.randn(2, 3, 5, 5, 5) * 4
    assert float(TemperatureKLLoss(activation=activation)(logits, logits.clone())) == 0.0


def test_kl_is_the_scaled_bernoulli_divergence_and_teacher_gets_no_gradient():
    torch.manual_seed(0)
    student = torch.randn(2, 3, 4, 4, 4, requires_grad=True)
    teacher = torch.randn(2, 3, 4, 4, 4, requires_grad=True)
    t = 2.0
    value = TemperatureKLLoss(temperature=t)(student, teacher)
    p, q = torch.sigmoid(teacher / t), torch.sigmoid(student / t)
    manual = (p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))).mean() * t * t
    assert float(value.detach()) == pytest.approx(float(manual.detach()), rel=1e-4)
    assert float(value.detach()) > 0
    value.backward()
    assert student.grad is not None and teacher.grad is None


def test_kl_softmax_matches_torch_kl_div():
    torch.manual_seed(1)
    student, teacher = torch.randn(2, 3, 4, 4, 4), torch.randn(2, 3, 4, 4, 4)
    value = TemperatureKLLoss(temperature=2.0, activation="softmax")(student, teacher)
    ref = F.kl_div(F.log_softmax(student / 2, 1), F.log_softmax(teacher / 2, 1), log_target=True, reduction="none")
    assert float(value) == pytest.approx(float(ref.sum(1).mean() * 4), rel=1e-4)


def test_kl_sample_mask_selects_samples():
    torch.manual_seed(2)
    student, teacher = torch.randn(3, 3, 4, 4, 4), torch.randn(3, 3, 4, 4, 4)
    loss = TemperatureKLLoss()
    select = torch.tensor([False, True, False])
    assert float(loss(student, teacher, select)) == pytest.approx(float(loss(student[1:2], teacher[1:2])), rel=1e-5)
    assert float(loss(student, teacher, torch.zeros(3, dtype=torch.bool))) == 0.0


# ---------------------------------------------------------------- bad arguments
@pytest.mark.parametrize(
    "factory, error",
    [
        (lambda: MultiKernelMMDLoss(kernel_num=0), ValueError),
        (lambda: MultiKernelMMDLoss(kernel_num=2.5), ValueError),
        (lambda: MultiKernelMMDLoss(kernel_mul=0), ValueError),
        (lambda: MultiKernelMMDLoss(kernel_mul="2"), TypeError),
        (lambda: MultiKernelMMDLoss(bandwidth=-1.0), ValueError),
        (lambda: MultiKernelMMDLoss(bandwidth=math.inf), ValueError),
        (lambda: MultiKernelMMDLoss(max_samples=0), ValueError),
        (lambda: FeatureMMDLoss(max_samples=True), ValueError),
        (lambda: TemperatureKLLoss(temperature=0), ValueError),
        (lambda: TemperatureKLLoss(temperature=math.nan), ValueError),
        (lambda: TemperatureKLLoss(temperature="2"), TypeError),
        (lambda: TemperatureKLLoss(activation="relu"), ValueError),
    ],
    ids=[
        "kernel_num_zero",
        "kernel_num_float",
        "kernel_mul_zero",
        "kernel_mul_str",
        "bandwidth_negative",
        "bandwidth_inf",
        "max_samples_zero",
        "max_samples_bool",
        "temperature_zero",
        "temperature_nan",
        "temperature_str",
        "activation",
    ],
)
def test_bad_constructor_arguments(factory, error):
    with pytest.raises(error):
        factory()


@pytest.mark.parametrize(
    "call",
    [
        lambda: gaussian_mmd(torch.randn(4, 3), torch.randn(4, 2)),
        lambda: gaussian_mmd(torch.randn(0, 3), torch.randn(4, 3)),
        lambda: gaussian_mmd(torch.randn(4, 3, 1), torch.randn(4, 3, 1)),
        lambda: FeatureMMDLoss()(torch.randn(1, 4, 2, 2, 2, 2), torch.randn(1, 4, 3, 2, 2, 2), torch.ones(4).bool()),
        lambda: FeatureMMDLoss()([], [], torch.ones(4).bool()),
        lambda: TemperatureKLLoss()(torch.randn(1, 3, 2), torch.randn(1, 2, 2)),
        lambda: TemperatureKLLoss()(torch.randn(2, 3, 2), torch.randn(2, 3, 2), torch.ones(3).bool()),
    ],
    ids=["mmd_dims", "mmd_empty", "mmd_not_2d", "feature_shapes", "feature_empty_list", "kl_shapes", "kl_mask_shape"],
)
def test_bad_inputs(call):
    with pytest.raises(ValueError):
        call()
