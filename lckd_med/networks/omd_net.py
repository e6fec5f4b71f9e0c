"""One-stage modality distillation network ("multimodal inheritance", Wei, Luo & Luo 2023, arXiv 2309.08204).

The paper gives the idea (transfer and fusion learned in one stage as two tasks); no code was published, so the
blocks below are lckd_med's reading of it for 3D MRI with four sequences (see ``docs/omd.md``):

* **Encoders and decoder**: the shared parts of :class:`~lckd_med.networks.model.MissingModalityNet` (the same as
  :class:`~lckd_med.networks.lckd_net.LCKDNet`'s); OMD only brings its fusion strategy,
  :class:`RestoreTranslateFusion`.
* **Joint adaptation network** (transfer task), :class:`ModalityRestoration`, at every encoder level (or, with
  ``restore_levels="bottleneck"``, at the bottleneck only, the other levels mean-filled as LCKD's): for each
  modality ``m`` a restoration module predicts ``m``'s feature map from the *available* modalities' feature maps.
  Available features pass through unchanged; only missing slots are replaced by restorations, and only the samples
  that miss a modality are restored (the others' restorations would be discarded).
* **Cross translation network** (fusion task), :class:`CrossTranslation`, at every level: one block, with one
  set of parameters shared by all modalities, translates each (real or restored) modality feature together with
  the cross-modal context into a message and an attention score; the fused map is the score-weighted sum.

Shapes and orders: input ``(B, M, H, W, D)``, ``M`` in :data:`~lckd_med.constants.MODALITIES` order; masks
``(B, M)`` bool in the same order; logits ``(B, 3, H, W, D)`` in :data:`~lckd_med.constants.REGIONS` order (ET, TC,
WT). Features of missing modalities are never read (restorations see masked inputs only), so, as for LCKDNet,
``forward(x, mask) == decode(encode(x_full), mask)`` and :meth:`decode_subsets` evaluates all subsets from one
encoding.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple

import torch
from monai.networks.blocks import Convolution
from torch import nn

from lckd_med.constants import NUM_MODALITIES
from lckd_med.networks.encoder import (
    DEFAULT_ACT,
    SPATIAL_DIMS,
    check_kernel_size,
    check_layer_spec,
    check_spatial_dims,
)
from lckd_med.networks.fusion import check_mask, mean_fill
from lckd_med.networks.model import MissingModalityNet
from lckd_med.networks.model import positive_int as _positive_int
from lckd_med.networks.norm import DEFAULT_NORM

__all__ = [
    "RESTORE_LEVELS",
    "ModalityRestoration",
    "CrossTranslation",
    "OMDFusion",
    "RestoreTranslateFusion",
    "OMDNet",
    "OMDOutput",
]

#: Values of :class:`OMDNet`'s ``restore_levels``, default first. ``"all"``: every level the decoder reads restores
#: its missing slots (lckd_med's reading of OMD since 0.1, ``docs/omd.md``). ``"bottleneck"``: only the bottleneck
#: restores; the skip levels fill a missing slot with the mean of the available ones (LCKD's rule), a named
#: cheaper option (1.04 instead of 1.75 MFLOP per voxel per training step for the lean preset, docs/omd.md).
RESTORE_LEVELS: tuple[str, ...] = ("all", "bottleneck")


def _check_stacked(features: torch.Tensor, num_modalities: int, channels: int, spatial_dims: int) -> None:
    if not isinstance(features, torch.Tensor) or features.dim() != 3 + spatial_dims:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"features must be (B, {num_modalities}, {channels}, H, W, D), got {shape}")
    if features.shape[1:3] != (num_modalities, channels):
        raise ValueError(f"features must be (B, {num_modalities}, {channels}, H, W, D), got {tuple(features.shape)}")


# Own block (from MONAI Convolution layers): MONAI has no block restoring missing-modality features.
class ModalityRestoration(nn.Module):
    """Restore every modality's feature map from the available ones (one restoration module per modality).

    Module of target modality ``m``: ``1x1x1 conv (M*C + M -> C) -> norm -> act -> k^3 conv (C -> C)`` on the
    concatenation of the available features (missing slots zeroed, slot order = modality order) and the ``M``
    availability flags as constant channels. The ``M`` modules run as one pass: the first convolution stacks their
    ``M`` output blocks (``M*C`` channels, block ``m`` belongs to module ``m``) and the second is a grouped
    convolution with ``M`` groups, so the parameters of different target modalities never mix. The output is
    linear (no activation) because it regresses real features.

    Args:
        channels: channels ``C`` of each modality's feature map.
        num_modalities: ``M``.
        kernel_size: odd int or ``spatial_dims`` odd ints of the second convolution.
        norm, act: MONAI layer specs of the hidden layer.
        spatial_dims: 3 (volumes, default) or 2 (images).

    Raises:
        ValueError: ``channels`` / ``num_modalities`` not positive ints, bad ``kernel_size`` / ``spatial_dims``.
        TypeError: bad ``norm`` / ``act`` spec.
    """

    def __init__(
        self,
        channels: int,
        num_modalities: int = NUM_MODALITIES,
        kernel_size: int | Sequence[int] = 3,
        norm: str | Sequence = DEFAULT_NORM,
        act: str | Sequence = DEFAULT_ACT,
        spatial_dims: int = SPATIAL_DIMS,
    ) -> None:
        super().__init__()
        self.channels = _positive_int(channels, "channels")
        self.num_modalities = _positive_int(num_modalities, "num_modalities")
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.kernel_size = check_kernel_size(kernel_size, self.spatial_dims)
        hidden = self.num_modalities * self.channels
        self.hidden = Convolution(
            self.spatial_dims,
            hidden + self.num_modalities,
            hidden,
            kernel_size=1,
            norm=check_layer_spec(norm, "norm"),
            act=check_layer_spec(act, "act"),
        )
        self.out = Convolution(
            self.spatial_dims, hidden, hidden, kernel_size=self.kernel_size, groups=self.num_modalities, conv_only=True
        )

    def _hidden(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Hidden layer of the ``M`` modules, ``(B, M*C, *S)``, from the available slots only."""
        batch, num_mod = features.shape[:2]
        spatial = features.shape[3:]
        m = mask.view(batch, num_mod, 1, *([1] * len(spatial)))
        visible = torch.where(m, features, torch.zeros((), dtype=features.dtype, device=features.device))
        flags = m.to(features.dtype).reshape(batch, num_mod, *([1] * len(spatial))).expand(batch, num_mod, *spatial)
        return self.hidden(torch.cat([visible.flatten(1, 2), flags], dim=1))

    def _check(self, features: torch.Tensor, mask: torch.Tensor, validate: bool) -> torch.Tensor:
        if validate:
            _check_stacked(features, self.num_modalities, self.channels, self.spatial_dims)
            mask = check_mask(mask, features.shape[0], self.num_modalities)
        return mask.reshape(-1, self.num_modalities).expand(features.shape[0], -1).to(features.device)

    def predict(self, features: torch.Tensor, mask: torch.Tensor, *, validate: bool = True) -> torch.Tensor:
        """Restorations of every slot, ``(B, M, C, *S)``, computed from the available slots only.

        Args:
            features: ``(B, M, C, H, W, D)`` features (missing slots may hold anything; they are not read).
            mask: ``(B, M)`` bool availability (``(M,)`` broadcasts); every sample needs one available modality.
            validate: check shapes and ``mask``.
        """
        mask = self._check(features, mask, validate)
        out = self.out(self._hidden(features, mask))
        return out.view(*features.shape)

    def forward(
        self, features: torch.Tensor, mask: torch.Tensor, *, validate: bool = True, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Complete features ``(B, M, C, *S)``: available slots unchanged, missing slots restored.

        Only the samples with a missing slot are restored (``rows``, their indices, when the caller knows them;
        computed here otherwise): with per-sample normalisation (the default) this changes nothing but compute.
        Under ``torch.jit.trace`` every sample is restored, so that one traced graph serves every mask. For the
        restored samples all ``M`` restorations are computed in one grouped pass and the available slots' ones
        discarded: on CPU this measured faster than convolving only the missing (sample, modality) pairs with weight
        slices.
        """
        mask = self._check(features, mask, validate)
        if torch.jit.is_tracing():
            rows = torch.arange(features.shape[0], device=features.device)
        elif rows is None:
            rows = torch.nonzero(~mask.all(dim=1)).flatten()
        if rows.numel() == 0:
            return features
        if rows.numel() == features.shape[0]:
            restored = self.predict(features, mask, validate=False)
        else:
            restored = features.index_copy(0, rows, self.predict(features[rows], mask[rows], validate=False))
        m = mask.view(*mask.shape, *([1] * (features.dim() - 2)))
        return torch.where(m, features, restored)


# Own block (from MONAI Convolution layers): MONAI has no modality-shared cross-modal fusion block.
class CrossTranslation(nn.Module):
    """Cross translation block: one set of parameters applied to every modality, then attention-weighted fusion.

    For each modality slot ``m`` (real or restored feature ``z_m``), with the cross-modal context
    ``c = mean_m z_m`` and a flag ``r_m`` (1 where ``z_m`` is a restoration), the *same* block
    ``1x1x1 conv (2C + 1 -> C) -> norm -> act -> k^3 conv (C -> C + 1)`` gives a message ``h_m`` (``C`` channels)
    and a score ``s_m``; the output is ``sum_m softmax_m(s_m) * (z_m + h_m)``. The number of parameters does not
    depend on ``M`` and permuting the modality slots (with their flags) leaves the output unchanged.

    Args:
        channels: ``C``.
        kernel_size: odd int or ``spatial_dims`` odd ints of the second convolution.
        norm, act: MONAI layer specs of the hidden layer.
        spatial_dims: 3 (volumes, default) or 2 (images).

    Raises:
        ValueError: ``channels`` not a positive int, bad ``kernel_size`` / ``spatial_dims``.
        TypeError: bad ``norm`` / ``act`` spec.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int | Sequence[int] = 1,
        norm: str | Sequence = DEFAULT_NORM,
        act: str | Sequence = DEFAULT_ACT,
        spatial_dims: int = SPATIAL_DIMS,
    ) -> None:
        super().__init__()
        self.channels = _positive_int(channels, "channels")
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.kernel_size = check_kernel_size(kernel_size, self.spatial_dims)
        self.hidden = Convolution(
            self.spatial_dims,
            2 * self.channels + 1,
            self.channels,
            kernel_size=1,
            norm=check_layer_spec(norm, "norm"),
            act=check_layer_spec(act, "act"),
        )
        self.out = Convolution(
            self.spatial_dims, self.channels, self.channels + 1, kernel_size=self.kernel_size, conv_only=True
        )

    def forward(self, features: torch.Tensor, restored: torch.Tensor) -> torch.Tensor:
        """Fuse complete ``(B, M, C, H, W, D)`` features; ``restored`` ``(B, M)`` bool marks restored slots.

        Returns:
            ``(B, C, H, W, D)``.
        """
        if not isinstance(features, torch.Tensor) or features.dim() != 3 + self.spatial_dims:
            raise ValueError(
                f"features must be (B, M, {self.channels}, H, W, D), got {getattr(features, 'shape', None)}"
            )
        if features.shape[2] != self.channels:
            raise ValueError(f"features must be (B, M, {self.channels}, H, W, D), got {tuple(features.shape)}")
        batch, num_mod = features.shape[:2]
        spatial = features.shape[3:]
        if not isinstance(restored, torch.Tensor) or restored.dtype != torch.bool:
            raise TypeError("restored must be a torch.bool tensor")
        restored = restored.reshape(-1, num_mod).expand(batch, num_mod).to(features.device)
        context = features.mean(dim=1, keepdim=True).expand_as(features)
        flags = (
            restored.to(features.dtype)
            .view(batch, num_mod, 1, *([1] * len(spatial)))
            .expand(batch, num_mod, 1, *spatial)
        )
        inp = torch.cat([features, context, flags], dim=2).flatten(0, 1)  # modalities folded into the batch
        out = self.out(self.hidden(inp)).view(batch, num_mod, self.channels + 1, *spatial)
        message, score = out[:, :, : self.channels], out[:, :, self.channels :]
        weights = torch.softmax(score.float(), dim=1).to(features.dtype)
        return (weights * (features + message)).sum(dim=1)


class OMDFusion(nn.Module):
    """One level of OMD fusion: :class:`ModalityRestoration` (or mean-fill) then the shared :class:`CrossTranslation`.

    Drop-in for :class:`~lckd_med.networks.fusion.ModalityFusion`: ``forward(features (B, M, C, *S), mask (B, M))``
    returns ``(B, C, *S)``.

    Args:
        channels: ``C``.
        num_modalities: ``M``.
        restore_kernel_size, translate_kernel_size: kernel of the last convolution of each block.
        norm, act: MONAI layer specs.
        spatial_dims: 3 (volumes, default) or 2 (images).
        restore: ``False``: no restoration module; a missing slot takes the mean of the available ones
            (:func:`~lckd_med.networks.fusion.mean_fill`) before the translation.
    """

    def __init__(
        self,
        channels: int,
        num_modalities: int = NUM_MODALITIES,
        restore_kernel_size: int | Sequence[int] = 3,
        translate_kernel_size: int | Sequence[int] = 1,
        norm: str | Sequence = DEFAULT_NORM,
        act: str | Sequence = DEFAULT_ACT,
        spatial_dims: int = SPATIAL_DIMS,
        restore: bool = True,
    ) -> None:
        super().__init__()
        self.channels = _positive_int(channels, "channels")
        self.num_modalities = _positive_int(num_modalities, "num_modalities")
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.restore = (
            ModalityRestoration(channels, num_modalities, restore_kernel_size, norm, act, spatial_dims)
            if restore
            else None
        )
        self.translate = CrossTranslation(channels, translate_kernel_size, norm, act, spatial_dims)

    def complete(
        self, features: torch.Tensor, mask: torch.Tensor, *, validate: bool = True, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, M, C, *S)`` features with the missing slots restored (mean-filled without a restoration module);
        ``rows`` as :meth:`ModalityRestoration.forward`."""
        if self.restore is None:
            return mean_fill(features, mask, validate=validate)
        return self.restore(features, mask, validate=validate, rows=rows)

    def forward(self, features: torch.Tensor, mask: torch.Tensor, *, validate: bool = True) -> torch.Tensor:
        """Restore the missing slots of ``(B, M, C, *S)`` features and fuse them into ``(B, C, *S)``."""
        if validate:
            _check_stacked(features, self.num_modalities, self.channels, self.spatial_dims)
            mask = check_mask(mask, features.shape[0], self.num_modalities)
        mask = mask.reshape(-1, self.num_modalities).expand(features.shape[0], -1).to(features.device)
        return self.translate(self.complete(features, mask, validate=False), ~mask)


class RestoreTranslateFusion(nn.ModuleList):
    """OMD's fusion strategy: one :class:`OMDFusion` per level (restoration, then shared cross translation).

    Laid out like LCKD's :class:`~lckd_med.networks.fusion.MeanFillFusion` (entry ``l`` fuses level ``l``, keys
    ``fusions.<l>.*``); ``filters``, ``num_modalities``, ``norm``, ``act`` and ``spatial_dims`` mean the same there.
    ``restore_kernel_size`` and ``translate_kernel_size`` are those of :class:`OMDFusion`; ``restore_levels`` (see
    :data:`RESTORE_LEVELS`) says which levels restore.
    """

    def __init__(
        self,
        filters: Sequence[int],
        num_modalities: int = NUM_MODALITIES,
        norm: str | Sequence = DEFAULT_NORM,
        act: str | Sequence = DEFAULT_ACT,
        restore_kernel_size: int | Sequence[int] = 3,
        translate_kernel_size: int | Sequence[int] = 1,
        spatial_dims: int = SPATIAL_DIMS,
        restore_levels: str = "all",
    ) -> None:
        if restore_levels not in RESTORE_LEVELS:
            raise ValueError(f"restore_levels must be one of {list(RESTORE_LEVELS)}, got {restore_levels!r}")
        last = len(filters) - 1
        super().__init__(
            OMDFusion(
                f,
                num_modalities,
                restore_kernel_size,
                translate_kernel_size,
                norm,
                act,
                spatial_dims,
                restore=restore_levels == "all" or level == last,
            )
            for level, f in enumerate(filters)
        )

    @property
    def restored_levels(self) -> list[int]:
        """Indices of the levels that restore missing slots (the others mean-fill them)."""
        return [level for level, fusion in enumerate(self) if fusion.restore is not None]

    def complete(self, features: Sequence[torch.Tensor], mask: torch.Tensor) -> list[torch.Tensor]:
        """Per level ``(B, M, C_l, *S_l)`` features with the missing slots restored (``mask`` validated); only the
        samples that miss a modality go through the restoration modules."""
        rows = None if torch.jit.is_tracing() else torch.nonzero(~mask.all(dim=1)).flatten()  # one sync, all levels
        return [fusion.complete(f, mask, validate=False, rows=rows) for fusion, f in zip(self, features, strict=True)]

    def translate(self, complete: Sequence[torch.Tensor], mask: torch.Tensor) -> list[torch.Tensor]:
        """Per level fused ``(B, C_l, *S_l)`` maps from complete features (restored slots = ``~mask``)."""
        return [fusion.translate(z, ~mask) for fusion, z in zip(self, complete, strict=True)]

    def forward(
        self,
        features: Sequence[torch.Tensor],
        mask: torch.Tensor,
        zero_features: Callable[[torch.Tensor], list[torch.Tensor]] | None = None,
    ) -> list[torch.Tensor]:
        """Fused ``(B, C_l, *S_l)`` map per level; ``zero_features`` is unused (nothing reads a missing input)."""
        return self.translate(self.complete(features, mask), mask)


class OMDOutput(NamedTuple):
    """Training outputs of :meth:`OMDNet.forward` when ``available`` is given.

    Attributes:
        logits: prediction under ``mask`` (dropped modalities restored), ``(B, 3, *S)`` or a deep-supervision list.
        logits_real: prediction under ``available`` (real features of the dropped modalities), same layout.
        restored: per level, ``(B, M, C_l, *S_l)`` complete features under ``mask`` (restorations in dropped slots).
        real: per level, ``(B, M, C_l, *S_l)`` encoder features (zeros where not available).
        dropped: ``(B, M)`` bool, available but masked: the slots where restorations have real targets.
    """

    logits: Any
    logits_real: Any
    restored: list[torch.Tensor]
    real: list[torch.Tensor]
    dropped: torch.Tensor


class OMDNet(MissingModalityNet):
    """Per-modality 3D U-Net encoders, restoration + shared cross translation at every level, shared decoder.

    A :class:`~lckd_med.networks.model.MissingModalityNet` with the :class:`RestoreTranslateFusion` strategy, so it
    has the interface of :class:`~lckd_med.networks.protocol.SegmentationNetwork` and the sweep, evaluation, batch
    inference and checkpoints work unchanged. Training additionally calls ``forward(x, mask, available=...)``, which returns an
    :class:`OMDOutput` with the predictions from restored and from real features and both feature sets.

    Args:
        restore_kernel_size: kernel of the restoration modules' spatial convolution (odd; default 3).
        translate_kernel_size: kernel of the translation block's last convolution (odd; default 1).
        restore_levels: ``"all"`` (default: every level restores, lckd_med's design of OMD) or ``"bottleneck"``
            (the bottleneck restores, the skip levels mean-fill; cheaper), see :data:`RESTORE_LEVELS`.
        fill_levels: must be ``"all"``: a missing slot is never left to the encoding of a zero input, at any level
            (it is restored, or mean-filled where ``restore_levels`` does not restore); LCKD's ``"bottleneck"`` rule
            does not apply.
        shared: keywords of :class:`~lckd_med.networks.model.MissingModalityNet` (``in_modalities``, ...,
            ``head_filters``, ``in_channels``, ``spatial_dims``), with its defaults.

    Raises:
        ValueError / TypeError: any invalid argument, with the reason.
    """

    #: Hyper-parameters saved before ``restore_levels`` existed (releases up to 0.3.0) restored every level.
    LEGACY_HPARAMS: ClassVar[dict[str, Any]] = {"restore_levels": "all"}

    def __init__(
        self,
        *,
        restore_kernel_size: int | Sequence[int] = 3,
        translate_kernel_size: int | Sequence[int] = 1,
        restore_levels: str = "all",
        fill_levels: str = "all",
        **shared: Any,
    ) -> None:
        dims = check_spatial_dims(shared.get("spatial_dims", SPATIAL_DIMS))
        restore_k = check_kernel_size(restore_kernel_size, dims)
        translate_k = check_kernel_size(translate_kernel_size, dims)
        if fill_levels != "all":
            raise ValueError(
                f"OMDNet restores missing modalities at every level; fill_levels must be 'all', got {fill_levels!r}"
            )
        if restore_levels not in RESTORE_LEVELS:
            raise ValueError(f"restore_levels must be one of {list(RESTORE_LEVELS)}, got {restore_levels!r}")
        fusion = functools.partial(
            RestoreTranslateFusion,
            restore_kernel_size=restore_k,
            translate_kernel_size=translate_k,
            restore_levels=restore_levels,
        )
        super().__init__(fusion, **shared)
        self.restore_levels = restore_levels
        self.fill_levels = fill_levels
        self.restore_kernel_size = restore_k
        self.translate_kernel_size = translate_k

    # ------------------------------------------------------------------ configuration
    def _extra_hparams(self) -> dict[str, Any]:
        return {
            "fill_levels": self.fill_levels,
            "restore_levels": self.restore_levels,
            "restore_kernel_size": list(self.restore_kernel_size),
            "translate_kernel_size": list(self.translate_kernel_size),
        }

    # ------------------------------------------------------------------ decoder
    def restore(self, features: Sequence[torch.Tensor], mask: torch.Tensor) -> list[torch.Tensor]:
        """Complete features under ``mask``: per level ``(B, M, C_l, *S_l)``, missing slots restored.

        Args:
            features: output of :meth:`encode`.
            mask: ``(B, M)`` bool (``(M,)`` broadcasts); every sample needs one available modality.
        """
        batch = self._check_features(features)
        mask = check_mask(mask, batch, self.in_modalities).to(features[0].device)
        return self.fusions.complete(features, mask)

    def _decode_with_complete(self, features: Sequence[torch.Tensor], mask: torch.Tensor, deep: bool) -> Any:
        """``(logits, complete features)`` under a validated ``mask``."""
        complete = self.fusions.complete(features, mask)
        return self.decoder(self.fusions.translate(complete, mask), deep), complete

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        return_features: bool = False,
        available: torch.Tensor | None = None,
    ) -> Any:
        """Segment ``x`` ``(B, M, H, W, D)``; with ``available``, the training outputs of both paths.

        Args:
            x: input, modality order; spatial size a multiple of :attr:`size_divisor`.
            mask: ``(B, M)`` bool, the modalities the prediction may use (``None`` = all, or ``available``).
            return_features: as :meth:`MissingModalityNet.forward` (ignored when ``available`` is given).
            available: ``(B, M)`` bool, the modalities actually present in ``x`` (a superset of ``mask``). The
                modalities in ``available`` but not in ``mask`` are encoded too: their real features are the
                restoration targets and give the prediction from real features. All outputs come from one encoding
                and one decoder pass of ``2B`` samples (``B`` when nothing is dropped).

        Returns:
            logits as :meth:`MissingModalityNet.forward`; with ``available`` an :class:`OMDOutput`.

        Raises:
            ValueError: bad shapes, or ``mask`` marks a modality that ``available`` does not.
        """
        if available is None:
            return super().forward(x, mask, return_features)
        x = self._check_input(x)
        batch = x.shape[0]
        available = check_mask(available, batch, self.in_modalities).to(x.device)
        mask = available if mask is None else check_mask(mask, batch, self.in_modalities).to(x.device)
        if bool((mask & ~available).any()):
            raise ValueError("mask marks modalities as usable that `available` marks as missing")
        features = self.encode(x, available)
        deep = self.deep_supervision and self.training
        dropped = available & ~mask
        if not bool(dropped.any()):
            logits, complete = self._decode_with_complete(features, mask, deep)
            return OMDOutput(logits, logits, complete, features, dropped)
        both = [torch.cat([f, f], dim=0) for f in features]
        logits, complete = self._decode_with_complete(both, torch.cat([mask, available], dim=0), deep)

        def split(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return t[:batch], t[batch:]

        if isinstance(logits, list):
            pairs = [split(t) for t in logits]
            restored_logits, real_logits = [p[0] for p in pairs], [p[1] for p in pairs]
        else:
            restored_logits, real_logits = split(logits)
        return OMDOutput(restored_logits, real_logits, [c[:batch] for c in complete], features, dropped)
