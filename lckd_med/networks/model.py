"""The one missing-modality segmentation model: per-modality encoders -> fusion strategy -> shared decoder.

Shapes and orders: input ``(B, M, H, W, D)`` with channel ``i`` = :data:`~lckd_med.constants.MODALITIES` ``[i]``;
availability mask ``(B, M)`` bool in the same order; output ``(B, 3, H, W, D)`` logits of independent sigmoid
channels in :data:`~lckd_med.constants.REGIONS` order (ET, TC, WT). That is BraTS; for another modality set
(:class:`~lckd_med.modalities.ModalitySpec`, ``in_channels`` and ``spatial_dims``) the input is
``(B, sum(in_channels), *S)`` with each modality's channels contiguous and ``*S`` two or three spatial axes.

The parts:

* encoders: one :class:`~lckd_med.networks.encoder.UNetEncoder` per modality (or one shared), ``encoders``;
* a fusion strategy, ``fusions``: a ``ModuleList`` with one fusion block per level whose call
  ``fusions(features, mask, zero_features) -> fused`` turns per-level ``(B, M, C_l, *S_l)`` features into per-level
  ``(B, C_l, *S_l)`` maps (LCKD: :class:`~lckd_med.networks.fusion.MeanFillFusion`; OMD:
  :class:`~lckd_med.networks.omd_net.RestoreTranslateFusion`);
* one shared :class:`~lckd_med.networks.decoder.UNetDecoder`, ``decoder``.

The content of a missing channel is never read, hence ``forward(x, mask) == decode(encode(x_full), mask)``, which
is what lets :meth:`MissingModalityNet.decode_subsets` evaluate all 15 subsets from one encoding.
The methods' networks (:class:`~lckd_med.networks.lckd_net.LCKDNet`, :class:`~lckd_med.networks.omd_net.OMDNet`)
only choose the fusion strategy and declare their constructor arguments (the checkpoint's ``hparams``).
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from monai.networks.nets import DynUNet
from torch import nn

from lckd_med.constants import NUM_MODALITIES, NUM_REGIONS
from lckd_med.networks.decoder import UNetDecoder
from lckd_med.networks.encoder import (
    DEFAULT_ACT,
    DEFAULT_FILTERS,
    SPATIAL_DIMS,
    UNetEncoder,
    check_dropout,
    check_filters,
    check_kernel_size,
    check_kernel_stride,
    check_layer_spec,
    check_spatial_dims,
    check_strides,
)
from lckd_med.networks.fusion import check_mask
from lckd_med.networks.norm import DEFAULT_NORM

__all__ = ["MissingModalityNet", "positive_int"]

#: Checkpoint key prefixes of the decoder parts before they became one ``decoder`` module (issue 10).
_LEGACY_DECODER_KEYS = ("up_blocks.", "head_up.", "head.", "ds_heads.")


def positive_int(value: object, name: str) -> int:
    """``value`` if it is a positive int (bools refused), else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _to_json(value: Any) -> Any:
    """Tuples -> lists, recursively, so ``hparams`` survives a JSON round trip unchanged."""
    if isinstance(value, (tuple, list)):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    return value


class MissingModalityNet(nn.Module):
    """Per-modality encoders, a fusion strategy, one shared decoder (see the module docstring).

    Subclasses take their own arguments (keyword-only) plus ``**shared`` (the arguments below, passed on
    unchanged), call ``super().__init__(fusion, **shared)`` and list their own arguments in :meth:`_extra_hparams`;
    :meth:`hparam_names` collects both.

    Args:
        fusion: ``(filters, num_modalities, norm, act, spatial_dims=...) -> fusion strategy`` (a ``ModuleList``,
            one block per level).
        in_modalities: number of input modalities ``M`` (one encoder each).
        out_channels: output channels (3 region logits ET, TC, WT).
        filters: encoder/decoder channels per level, first level -> bottleneck.
        strides: per-level strides (int or ``spatial_dims`` ints); ``None`` -> 1 at the first level, 2 at the
            others. A first stride above 1 is a strided stem: the U-Net then runs at reduced resolution and a light
            head (see ``head_filters``) brings the logits back to full resolution.
        kernel_size: odd int or ``spatial_dims`` odd ints for every convolution.
        share_encoder: one encoder for all modalities instead of one each (``M`` folded into the batch).
        deep_supervision: in training mode :meth:`decode` / :meth:`forward` return a list of logits, one per
            decoder level, full resolution first; in eval mode the full-resolution logits only.
        dropout: dropout probability after each convolution of encoders and decoder.
        norm: MONAI normalisation spec.
        act: MONAI activation spec.
        head_filters: channels of the full-resolution head of a strided stem; ``None`` -> ``max(1, filters[0] // 2)``.
            Must be ``None`` without a stem.
        in_channels: input channels of each modality, modality order (the input has ``sum(in_channels)``
            channels, each modality's contiguous, see :attr:`lckd_med.modalities.ModalitySpec.channel_slices`);
            ``None`` -> one each (BraTS).
        spatial_dims: 3 (volumes, BraTS) or 2 (images).

    Raises:
        ValueError / TypeError: any invalid argument, with the reason.
    """

    #: Voxel budget (batch x window volume, summed over the masks decoded together) of one
    #: :meth:`decode_subsets` pass on an accelerator when ``chunk_size`` is ``None``: two 128^3 windows.
    SUBSET_BATCH_VOXELS: int = 2 * 128**3
    #: The same on the CPU, smaller: a pass there is memory-bound, and 15 masks of a 48^3 window decoded together
    #: were measured slower than 2-5 at a time (docs/performance.md, "CPU evaluation: masks decoded together").
    SUBSET_BATCH_VOXELS_CPU: int = 3 * 2**17
    #: ``from_hparams`` defaults for keys missing from hyper-parameters saved by older versions.
    LEGACY_HPARAMS: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        fusion: Callable[..., nn.ModuleList],
        *,
        in_modalities: int = NUM_MODALITIES,
        out_channels: int = NUM_REGIONS,
        filters: Sequence[int] = DEFAULT_FILTERS,
        strides: Sequence[int | Sequence[int]] | None = None,
        kernel_size: int | Sequence[int] = 3,
        share_encoder: bool = False,
        deep_supervision: bool = False,
        dropout: float = 0.0,
        norm: str | Sequence = DEFAULT_NORM,
        act: str | Sequence = DEFAULT_ACT,
        head_filters: int | None = None,
        in_channels: Sequence[int] | None = None,
        spatial_dims: int = SPATIAL_DIMS,
    ) -> None:
        super().__init__()
        self.in_modalities = positive_int(in_modalities, "in_modalities")
        self.in_channels = self._check_in_channels(in_channels, self.in_modalities)
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.out_channels = positive_int(out_channels, "out_channels")
        self.filters = check_filters(filters)
        if len(self.filters) < 2:
            raise ValueError(f"filters needs at least 2 levels (one skip + bottleneck), got {list(self.filters)}")
        self.strides = check_strides(strides, len(self.filters), self.spatial_dims)
        self.kernel_size = check_kernel_size(kernel_size, self.spatial_dims)
        check_kernel_stride(self.kernel_size, self.strides)
        for name, flag in (("share_encoder", share_encoder), ("deep_supervision", deep_supervision)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {flag!r}")
        self.share_encoder = share_encoder
        self.deep_supervision = deep_supervision
        self.dropout = check_dropout(dropout)
        self.norm = check_layer_spec(norm, "norm")
        self.act = check_layer_spec(act, "act")
        if share_encoder and len(set(self.in_channels)) > 1:
            raise ValueError(f"share_encoder needs the same channels for every modality, got in_channels={in_channels}")
        if all(s == 1 for s in self.strides[0]):
            if head_filters is not None:
                raise ValueError(
                    f"head_filters={head_filters!r} needs a strided stem (strides[0] > 1); the first level already "
                    "runs at full resolution"
                )
            self.head_filters = None
        else:
            default_head = max(1, self.filters[0] // 2)
            self.head_filters = default_head if head_filters is None else positive_int(head_filters, "head_filters")
        # cache of zero-input encodings for inference (see zero_features)
        self._zero_cache: tuple[tuple, list[torch.Tensor]] | None = None

        def make_encoder(channels: int) -> UNetEncoder:
            return UNetEncoder(
                channels, self.filters, self.strides, self.kernel_size, self.norm, self.act, self.dropout, spatial_dims
            )

        # construction order = parameter-initialisation order (encoders, fusion, decoder): keep it stable
        self.encoders = nn.ModuleList([make_encoder(c) for c in self.in_channels[: 1 if share_encoder else None]])
        self.fusions = fusion(self.filters, self.in_modalities, self.norm, self.act, spatial_dims=self.spatial_dims)
        self.decoder = UNetDecoder(
            self.filters,
            self.strides,
            self.kernel_size,
            self.out_channels,
            self.norm,
            self.act,
            self.dropout,
            self.head_filters,
            deep_supervision,
            self.spatial_dims,
        )
        self.apply(DynUNet.initialize_weights)  # MONAI's nnU-Net init (Kaiming, LeakyReLU slope 0.01)
        self._register_load_state_dict_pre_hook(self._legacy_keys)

    @staticmethod
    def _legacy_keys(state_dict: dict, prefix: str, *args: Any) -> None:
        """Checkpoints saved before the decoder was its own module name its parts at the top level."""
        for key in [k for k in state_dict if k.startswith(prefix)]:
            rest = key[len(prefix) :]
            if rest.startswith(_LEGACY_DECODER_KEYS):
                state_dict[f"{prefix}decoder.{rest}"] = state_dict.pop(key)

    # ------------------------------------------------------------------ configuration
    def _extra_hparams(self) -> dict[str, Any]:
        """Constructor arguments of the subclass beyond the shared ones."""
        return {}

    @property
    def hparams(self) -> dict[str, Any]:
        """Every constructor argument, JSON-serialisable (tuples as lists); :meth:`from_hparams` inverts it."""
        return _to_json(
            {
                "in_modalities": self.in_modalities,
                "out_channels": self.out_channels,
                "filters": self.filters,
                "strides": self.strides,
                "kernel_size": self.kernel_size,
                "share_encoder": self.share_encoder,
                "deep_supervision": self.deep_supervision,
                "dropout": self.dropout,
                "norm": self.norm,
                "act": self.act,
                "head_filters": self.head_filters,
                "in_channels": self.in_channels,
                "spatial_dims": self.spatial_dims,
                **self._extra_hparams(),
            }
        )

    @staticmethod
    def _check_in_channels(in_channels: Sequence[int] | None, in_modalities: int) -> tuple[int, ...]:
        if in_channels is None:
            return (1,) * in_modalities
        if isinstance(in_channels, (str, bytes)) or not isinstance(in_channels, Sequence):
            raise ValueError(f"in_channels must be a sequence of positive ints (one per modality), got {in_channels!r}")
        if len(in_channels) != in_modalities:
            raise ValueError(f"in_channels has {len(in_channels)} entries for in_modalities={in_modalities}")
        return tuple(positive_int(c, "in_channels entries") for c in in_channels)

    @classmethod
    def hparam_names(cls) -> set[str]:
        """Names of every constructor argument that :attr:`hparams` holds (the shared ones and the subclass's)."""
        names: set[str] = set()
        for klass in cls.__mro__:
            if issubclass(klass, MissingModalityNet) and "__init__" in vars(klass):
                params = inspect.signature(klass.__init__).parameters.values()
                names |= {p.name for p in params if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD}
        return names - {"self", "fusion"}

    @classmethod
    def complete_hparams(cls, hparams: Mapping[str, Any]) -> dict[str, Any]:
        """``hparams`` with the keys older versions did not save filled in (:attr:`LEGACY_HPARAMS`; one channel per
        modality and 3 spatial dims, i.e. BraTS, before modality specs existed), so it compares equal to the
        :attr:`hparams` of the network it rebuilds.

        Raises:
            TypeError: ``hparams`` is not a mapping.
            ValueError: unknown keys.
        """
        if not isinstance(hparams, Mapping):
            raise TypeError(f"hparams must be a mapping, got {type(hparams).__name__}")
        allowed = cls.hparam_names()
        unknown = sorted(set(hparams) - allowed)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} hparams {unknown}; allowed: {sorted(allowed)}")
        out = {**cls.LEGACY_HPARAMS, **dict(hparams)}
        out.setdefault("spatial_dims", SPATIAL_DIMS)
        if out.get("in_channels") is None:
            out["in_channels"] = [1] * int(out.get("in_modalities", NUM_MODALITIES))
        return out

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any]) -> MissingModalityNet:
        """Rebuild a network (untrained) from :attr:`hparams`, e.g. as stored in a checkpoint.

        Keys missing from older checkpoints are filled in by :meth:`complete_hparams`.

        Raises:
            TypeError: ``hparams`` is not a mapping.
            ValueError: unknown keys.
        """
        return cls(**cls.complete_hparams(hparams))

    @property
    def total_channels(self) -> int:
        """Channels of the input image (sum of :attr:`in_channels`)."""
        return sum(self.in_channels)

    @property
    def size_divisor(self) -> tuple[int, ...]:
        """Per-dimension product of the strides: every spatial size must be a multiple of it."""
        return tuple(math.prod(s[d] for s in self.strides) for d in range(self.spatial_dims))

    @property
    def num_levels(self) -> int:
        """Number of resolution levels (bottleneck included)."""
        return len(self.filters)

    # ------------------------------------------------------------------ checks
    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        """Validated input as a plain tensor (MetaTensor metadata is not needed inside the network)."""
        if not isinstance(x, torch.Tensor) or x.dim() != 2 + self.spatial_dims or x.shape[1] != self.total_channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            axes = ", ".join("HWD"[: self.spatial_dims])
            raise ValueError(f"input must be (B, {self.total_channels}, {axes}), got {shape}")
        spatial = tuple(x.shape[2:])
        if any(n % d for n, d in zip(spatial, self.size_divisor, strict=True)):
            raise ValueError(
                f"spatial size {spatial} must be divisible by net.size_divisor={self.size_divisor} "
                f"(product of strides {[list(s) for s in self.strides]}); pad or crop the input"
            )
        return x if type(x) is torch.Tensor else x.as_subclass(torch.Tensor)

    def _check_features(self, features: Sequence[torch.Tensor]) -> int:
        if not isinstance(features, Sequence) or len(features) != self.num_levels:
            n = len(features) if isinstance(features, Sequence) else type(features).__name__
            raise ValueError(f"features must be a list of {self.num_levels} levels, got {n}")
        batch = features[0].shape[0]
        for level, (f, c) in enumerate(zip(features, self.filters, strict=True)):
            if f.dim() != 3 + self.spatial_dims or f.shape[0] != batch or f.shape[1:3] != (self.in_modalities, c):
                raise ValueError(
                    f"features[{level}] must be (B, {self.in_modalities}, {c}, H, W, D), got {tuple(f.shape)}"
                )
        return batch

    # ------------------------------------------------------------------ encoder
    def encode(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Encode every modality with its own encoder (each sees only its channel).

        Args:
            x: ``(B, M, H, W, D)`` input, modality order.
            mask: optional ``(B, M)`` bool; missing (sample, modality) pairs are not encoded and hold zeros
                (the fusion never reads them). ``None`` encodes everything.

        Returns:
            One ``(B, M, filters[l], H_l, W_l, D_l)`` tensor per level, full resolution first.
        """
        x = self._check_input(x)
        batch, num_mod = x.shape[0], self.in_modalities
        todo = None if mask is None else check_mask(mask, batch, num_mod, require_any=False).to(x.device)
        if todo is not None and bool(todo.all()):
            todo = None
        if self.share_encoder:
            flat = x.reshape(batch * num_mod, self.in_channels[0], *x.shape[2:])
            if todo is None:
                feats = self.encoders[0](flat)
            else:
                idx = torch.nonzero(todo.flatten()).flatten()
                feats = [self._scatter(f, idx, batch * num_mod) for f in self.encoders[0](flat[idx])]
            return [f.reshape(batch, num_mod, *f.shape[1:]) for f in feats]
        per_mod: list[list[torch.Tensor]] = []
        for m, (enc, channels) in enumerate(zip(self.encoders, self._channel_slices(), strict=True)):
            if todo is None:
                per_mod.append(enc(x[:, channels]))
                continue
            idx = torch.nonzero(todo[:, m]).flatten()
            if idx.numel() == 0:
                per_mod.append([])  # filled with zeros below, once a dtype is known
            else:
                per_mod.append([self._scatter(f, idx, batch) for f in enc(x[idx, channels])])
        ref = next(p for p in per_mod if p)
        return [
            torch.stack([p[level] if p else torch.zeros_like(ref[level]) for p in per_mod], dim=1)
            for level in range(self.num_levels)
        ]

    def _channel_slices(self) -> list[slice]:
        """Input channels of each modality (contiguous, modality order)."""
        starts = [0, *itertools.accumulate(self.in_channels)]
        return [slice(a, b) for a, b in itertools.pairwise(starts)]

    @staticmethod
    def _scatter(values: torch.Tensor, idx: torch.Tensor, size: int) -> torch.Tensor:
        """Rows ``values`` placed at ``idx`` of a zero tensor with ``size`` rows (differentiable)."""
        if idx.numel() == size:
            return values
        out = values.new_zeros((size, *values.shape[1:]))
        return out.index_copy(0, idx, values)

    def zero_features(
        self, spatial: Sequence[int], needed: torch.Tensor | None = None, *, device: torch.device | str | None = None
    ) -> list[torch.Tensor]:
        """Encoder outputs for an all-zero input of each modality (the skip features of a missing modality).

        Computed at batch 1 (normalisation is per sample, so this equals encoding a zeroed channel inside any
        batch). Without autograd (inference) the result is cached for the last ``(spatial, device, dtype,
        autocast)`` and parameter versions, so a sliding window pays for it once per window shape; with autograd
        it is recomputed (and differentiable), as the reference code encodes its zeroed channels every step.

        Args:
            spatial: input spatial size ``(H, W, D)``.
            needed: optional ``(M,)`` bool, the modalities to encode (others hold zeros); ``None`` = all.
            device: where to compute (default: the parameters' device).

        Returns:
            One ``(1, M, filters[l], H_l, W_l, D_l)`` tensor per level, full resolution first.
        """
        param = next(self.encoders.parameters())
        device = torch.device(device) if device is not None else param.device
        spatial = tuple(int(n) for n in spatial)
        cache = not torch.is_grad_enabled()
        if cache:
            needed = None
            key = (
                spatial,
                str(device),
                param.dtype,
                torch.is_autocast_enabled(device.type),
                torch.get_autocast_dtype(device.type),
                self.training,
                tuple((p.data_ptr(), p._version) for p in self.encoders.parameters()),
            )
            if self._zero_cache is not None and self._zero_cache[0] == key:
                return self._zero_cache[1]
        num_mod = self.in_modalities

        def zeros(channels: int) -> torch.Tensor:
            return torch.zeros(1, channels, *spatial, dtype=param.dtype, device=device)

        if self.share_encoder:
            out = [
                f.unsqueeze(1).expand(1, num_mod, *f.shape[1:]) for f in self.encoders[0](zeros(self.in_channels[0]))
            ]
        else:
            todo = [True] * num_mod if needed is None else [bool(v) for v in needed.tolist()]
            per_mod = [enc(zeros(enc.in_channels)) if todo[m] else None for m, enc in enumerate(self.encoders)]
            ref = next(p for p in per_mod if p is not None)
            out = [
                torch.stack([p[level] if p is not None else torch.zeros_like(ref[level]) for p in per_mod], dim=1)
                for level in range(self.num_levels)
            ]
        if cache:
            self._zero_cache = (key, out)
        return out

    # ------------------------------------------------------------------ fusion + decoder
    def _zero_source(self, features: Sequence[torch.Tensor]) -> Callable[[torch.Tensor], list[torch.Tensor]]:
        """``needed -> zero_features`` at the window size the level-0 ``features`` come from."""
        spatial = [n * s for n, s in zip(features[0].shape[3:], self.strides[0], strict=True)]
        device = features[0].device
        return lambda needed: self.zero_features(spatial, needed, device=device)

    def _fuse(self, features: Sequence[torch.Tensor], mask: torch.Tensor) -> list[torch.Tensor]:
        """Fused ``(B, C_l, *S_l)`` map per level (``mask`` already validated)."""
        return self.fusions(features, mask, self._zero_source(features))

    def _decode(self, features: Sequence[torch.Tensor], mask: torch.Tensor, deep: bool) -> Any:
        return self.decoder(self._fuse(features, mask), deep)

    def decode(self, features: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Decode encoder features under an availability mask.

        Args:
            features: output of :meth:`encode`, one ``(B, M, C_l, *S_l)`` tensor per level.
            mask: ``(B, M)`` bool (``(M,)`` broadcasts); every sample needs one available modality.

        Returns:
            ``(B, out_channels, H, W, D)`` logits; with ``deep_supervision`` in training mode a list of logits,
            full resolution first, one per decoder level at that level's resolution.
        """
        batch = self._check_features(features)
        mask = check_mask(mask, batch, self.in_modalities).to(features[0].device)
        return self._decode(features, mask, self.deep_supervision and self.training)

    def decode_subsets(
        self, features: Sequence[torch.Tensor], masks: torch.Tensor, chunk_size: int | None = None
    ) -> torch.Tensor:
        """Decode one encoding under ``K`` availability masks (e.g. the 15 subsets) without re-encoding.

        The masks are batched: features are repeated ``k`` times along the batch and decoded in one pass of
        ``k * B`` samples, ``k = chunk_size`` masks at a time. ``None`` picks the largest ``k`` with
        ``k * B * H * W * D <=`` :attr:`SUBSET_BATCH_VOXELS` (at least 1): small windows get all 15 subsets in one
        pass, a 128^3 window is decoded 2 masks at a time (GPU time at that size is compute-bound, so larger
        batches buy little and cost memory linearly). On the CPU the budget is :attr:`SUBSET_BATCH_VOXELS_CPU`
        (3 masks of a 48^3 window). ``1`` is a plain loop. Per-sample normalisation makes the
        result independent of ``chunk_size`` (up to float round-off).
        Deep-supervision heads are not used.

        Args:
            features: output of :meth:`encode` (encode with ``mask=None`` so every modality is present).
            masks: ``(K, M)`` bool, one availability mask per row, each with at least one ``True``.
            chunk_size: masks decoded per pass; ``None`` = automatic (see above).

        Returns:
            ``(B, K, out_channels, H, W, D)`` logits; ``[:, k]`` equals ``decode(features, masks[k])``.
        """
        batch = self._check_features(features)
        if not isinstance(masks, torch.Tensor) or masks.dtype != torch.bool or masks.dim() != 2:
            raise ValueError(f"masks must be a (K, {self.in_modalities}) torch.bool tensor, got {masks!r}")
        if masks.shape[1] != self.in_modalities or masks.shape[0] == 0:
            raise ValueError(f"masks must have shape (K>=1, {self.in_modalities}), got {tuple(masks.shape)}")
        if not bool(masks.any(dim=1).all()):
            raise ValueError("every mask in masks needs at least one available modality")
        num = masks.shape[0]
        if chunk_size is None:
            voxels = batch * math.prod(features[0].shape[3:])
            cpu = features[0].device.type == "cpu"
            budget = self.SUBSET_BATCH_VOXELS_CPU if cpu else self.SUBSET_BATCH_VOXELS
            chunk_size = max(1, min(num, budget // max(voxels, 1)))
        positive_int(chunk_size, "chunk_size")
        masks = masks.to(features[0].device)
        outs = []
        for start in range(0, num, chunk_size):
            chunk = masks[start : start + chunk_size]
            k = chunk.shape[0]
            feats = [f.repeat(k, *([1] * (f.dim() - 1))) for f in features] if k > 1 else list(features)
            logits = self._decode(feats, chunk.repeat_interleave(batch, dim=0), deep=False)
            outs.append(logits.reshape(k, batch, *logits.shape[1:]).transpose(0, 1))
        return torch.cat(outs, dim=1)

    # ------------------------------------------------------------------ forward
    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, return_features: bool = False
    ) -> torch.Tensor | list[torch.Tensor] | tuple[Any, list[torch.Tensor]]:
        """Segment ``x`` of shape ``(B, M, H, W, D)`` given which sequences are available.

        Args:
            x: input, modality order; spatial size a multiple of :attr:`size_divisor`. Missing channels may hold
                anything (zeros by convention): they are neither encoded nor used.
            mask: ``(B, M)`` bool availability (``(M,)`` broadcasts); ``None`` = all available.
            return_features: also return the per-level encoder features (for the distillation loss); entries of
                missing modalities are zeros.

        Returns:
            logits (see :meth:`decode`), or ``(logits, features)`` with ``features[l]`` of shape
            ``(B, M, filters[l], H_l, W_l, D_l)``.
        """
        x = self._check_input(x)
        batch = x.shape[0]
        if mask is None:
            mask = torch.ones(batch, self.in_modalities, dtype=torch.bool, device=x.device)
        mask = check_mask(mask, batch, self.in_modalities).to(x.device)
        features = self.encode(x, mask)
        logits = self._decode(features, mask, self.deep_supervision and self.training)
        return (logits, features) if return_features else logits
