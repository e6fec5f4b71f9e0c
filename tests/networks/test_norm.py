"""SafeInstanceNorm: identical to nn.InstanceNorm3d, and defined (bias) on a single spatial element."""

from __future__ import annotations

import pytest
import torch
from monai.networks.blocks.dynunet_block import UnetBasicBlock
from monai.networks.layers.utils import get_norm_layer
from torch import nn

from lckd_med.networks.norm import DEFAULT_NORM, SAFE_INSTANCE_NORM, SafeInstanceNorm, SafeInstanceNorm2d


def _pair(channels: int, affine: bool = True) -> tuple[SafeInstanceNorm, nn.InstanceNorm3d]:
    torch.manual_seed(0)
    safe = SafeInstanceNorm(channels, affine=affine)
    ref = nn.InstanceNorm3d(channels, affine=affine)
    if affine:
        nn.init.normal_(safe.weight)
        nn.init.normal_(safe.bias)
        ref.load_state_dict(safe.state_dict())
    return safe, ref


@pytest.mark.parametrize("shape", [(2, 3, 5, 6, 7), (1, 4, 2, 1, 1), (3, 2, 1, 1, 2), (2, 5, 4, 4, 4), (3, 5, 6, 7)])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_equals_torch_instance_norm(shape, affine, training):
    channels = shape[1] if len(shape) == 5 else shape[0]
    safe, ref = _pair(channels, affine)
    safe.train(training)
    ref.train(training)
    x1 = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    y1 = safe.double()(x1)
    y2 = ref.double()(x2)
    assert torch.equal(y1, y2)
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    assert torch.equal(x1.grad, x2.grad)


@pytest.mark.parametrize("shape", [(1, 4, 1, 1, 1), (3, 4, 1, 1, 1), (4, 1, 1, 1)])
@pytest.mark.parametrize("training", [True, False])
def test_single_element_gives_bias(shape, training):
    norm = SafeInstanceNorm(4)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    norm.train(training)
    x = torch.randn(shape, requires_grad=True)
    y = norm(x)
    assert y.shape == x.shape
    assert torch.equal(y.reshape(-1, 4), norm.bias.detach().expand(y.numel() // 4, 4))
    y.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert torch.equal(norm.bias.grad, torch.full((4,), float(y.numel() // 4)))
    assert torch.equal(norm.weight.grad, torch.zeros(4))


def test_single_element_without_affine_is_zero_and_keeps_dtype():
    norm = SafeInstanceNorm(3, affine=False)
    x = torch.randn(2, 3, 1, 1, 1, dtype=torch.float64)
    y = norm(x)
    assert y.dtype == torch.float64
    assert torch.equal(y, torch.zeros_like(x))


def test_single_element_wrong_channels():
    with pytest.raises(ValueError, match="4 channels"):
        SafeInstanceNorm(4)(torch.randn(1, 3, 1, 1, 1))


def test_registered_in_monai_norm_factory():
    layer = get_norm_layer(DEFAULT_NORM, spatial_dims=3, channels=5)
    assert isinstance(layer, SafeInstanceNorm)
    assert layer.num_features == 5 and layer.affine and not layer.track_running_stats
    assert DEFAULT_NORM[0] == SAFE_INSTANCE_NORM


def test_monai_block_at_batch_one_on_1x1x1():
    block = UnetBasicBlock(3, 2, 4, kernel_size=3, stride=1, norm_name=DEFAULT_NORM).train()
    out = block(torch.randn(1, 2, 1, 1, 1))
    out.sum().backward()
    assert out.shape == (1, 4, 1, 1, 1)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("dims", "cls"), [(3, SafeInstanceNorm), (2, SafeInstanceNorm2d)])
def test_factory_by_spatial_dims(dims, cls):
    layer = get_norm_layer(DEFAULT_NORM, spatial_dims=dims, channels=4)
    assert type(layer) is cls


def test_2d_matches_torch_and_accepts_one_element():
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    ref = torch.nn.InstanceNorm2d(3, affine=True).double()
    assert torch.equal(SafeInstanceNorm2d(3).double()(x), ref(x))
    norm = SafeInstanceNorm2d(3)
    with torch.no_grad():
        norm.bias.copy_(torch.tensor([1.0, 2.0, 3.0]))
    y = norm(torch.randn(2, 3, 1, 1))
    assert torch.equal(y, torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1).expand(2, 3, 1, 1))


@pytest.mark.parametrize("dims", [1, 4])
def test_factory_refuses_other_dims(dims):
    with pytest.raises(ValueError, match="2-D or 3-D only"):
        get_norm_layer(SAFE_INSTANCE_NORM, spatial_dims=dims, channels=4)


@pytest.mark.parametrize("num_features", [0, -1, 2.5, True, "4"])
def test_bad_num_features(num_features):
    with pytest.raises(ValueError, match="num_features"):
        SafeInstanceNorm(num_features)


@pytest.mark.parametrize("eps", [0.0, -1e-5])
def test_bad_eps(eps):
    with pytest.raises(ValueError, match="eps"):
        SafeInstanceNorm(4, eps=eps)
