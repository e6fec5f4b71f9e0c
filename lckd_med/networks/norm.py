"""Instance normalisation that also works on feature maps with a single spatial element.

``torch.nn.InstanceNorm3d`` and ``torch.nn.functional.group_norm`` raise ``Expected more than 1 spatial element
when training`` for a ``(B, C, 1, 1, 1)`` input -- in training *and* in eval mode, since instance norm without
running statistics always uses the input's statistics. A U-Net bottleneck reaches ``1x1x1`` whenever the input is
small (a narrow sliding window, a 16^3 test volume through five levels), which is the batch-1 crash users of the
LCKD reference code had to patch torch for. MONAI has no normalisation layer that tolerates this (its ``instance``
factory returns the torch class), hence :class:`SafeInstanceNorm`.

Importing this module registers the layer in MONAI's normalisation factory under :data:`SAFE_INSTANCE_NORM`, so
every MONAI block that takes ``norm`` / ``norm_name`` accepts ``("safeinstance", {"affine": True})`` -- the
factory's documented extension point (``LayerFactory.factory_function``), used once and idempotently.
"""

from __future__ import annotations

import torch
from monai.networks.layers.factories import Norm
from torch import nn

__all__ = ["SafeInstanceNorm", "SafeInstanceNorm2d", "SAFE_INSTANCE_NORM", "DEFAULT_NORM"]

#: Name of :class:`SafeInstanceNorm` in ``monai.networks.layers.factories.Norm``.
SAFE_INSTANCE_NORM = "safeinstance"
#: Normalisation used by the lckd_med networks unless told otherwise (MONAI ``norm`` spec).
DEFAULT_NORM: tuple[str, dict] = (SAFE_INSTANCE_NORM, {"affine": True})


class _SafeInstanceNormMixin:
    """The single-spatial-element rule shared by the 3-D and 2-D layers (``_dims`` = spatial dimensions)."""

    _dims: int = 3

    def _safe_init(self, num_features: int, eps: float, affine: bool) -> dict:
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features must be a positive integer, got {num_features!r}")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps!r}")
        return {"eps": eps, "affine": bool(affine), "track_running_stats": False}

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Normalise ``input`` of shape ``(B, C, *S)`` or ``(C, *S)``; returns the same shape."""
        d = self._dims
        if input.dim() in (d + 1, d + 2) and input.shape[-d:].numel() == 1:
            self._check_input_dim(input)
            if input.size(-d - 1) != self.num_features:
                raise ValueError(f"expected {self.num_features} channels, got input of shape {tuple(input.shape)}")
            # x * 0 keeps the graph (gradient 0, the exact derivative; the weight gets a 0 gradient, not None)
            # and the input's dtype and device
            out = input * 0
            if self.affine:
                view = (-1, *([1] * d))
                out = out * self.weight.to(input.dtype).view(view) + self.bias.to(input.dtype).view(view)
            return out
        return super().forward(input)


class SafeInstanceNorm(_SafeInstanceNormMixin, nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` (no running statistics) that accepts a single spatial element.

    On inputs with more than one spatial element the output is exactly that of ``nn.InstanceNorm3d``. With one
    spatial element, ``(x - mean) / sqrt(var + eps)`` is identically ``0``, so the output is the affine bias (or
    ``0`` without affine) and the gradient with respect to the input is ``0`` -- the mathematical limit, not a
    special case invented here. Statistics are per sample and channel, so batch composition never matters.

    Args:
        num_features: number of channels ``C`` of the ``(B, C, H, W, D)`` input (or unbatched ``(C, H, W, D)``).
        eps: value added to the variance.
        affine: learn a per-channel scale and bias (initialised to 1 and 0).

    Raises:
        ValueError: ``num_features`` not a positive integer or ``eps`` not positive.
    """

    _dims = 3

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(num_features, **self._safe_init(num_features, eps, affine))


class SafeInstanceNorm2d(_SafeInstanceNormMixin, nn.InstanceNorm2d):
    """The 2-D twin of :class:`SafeInstanceNorm` (``(B, C, H, W)`` inputs), for 2-D modality specs."""

    _dims = 2

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(num_features, **self._safe_init(num_features, eps, affine))


def _safe_instance_factory(dim: int | None = 3) -> type[nn.Module]:
    """MONAI factory hook: :class:`SafeInstanceNorm` for 3 spatial dimensions, :class:`SafeInstanceNorm2d` for 2."""
    layers = {3: SafeInstanceNorm, 2: SafeInstanceNorm2d}
    if dim not in layers:
        raise ValueError(f"{SAFE_INSTANCE_NORM!r} normalisation is 2-D or 3-D only, got spatial_dims={dim}")
    return layers[dim]


if SAFE_INSTANCE_NORM.upper() not in Norm.components:  # idempotent under module reloads
    Norm.add_factory_callable(SAFE_INSTANCE_NORM, _safe_instance_factory)
