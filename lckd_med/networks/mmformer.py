"""mmFormer (Zhang et al., MICCAI 2022, "Multimodal Medical Transformer for Incomplete Multimodal Learning of
Brain Tumor Segmentation"), written here from the architecture of the published code (YaoZhang93/mmFormer,
``mmformer/mmformer.py`` at b18663a); every default is the published value.

Parts (``C = base_filters``, ``E = embed_dim``, ``M`` modalities, ``g = img_size / 16`` the bottleneck grid):

* **Hybrid per-modality encoders** (:class:`HybridEncoder`, one per modality, ``encoders``): a five-level CNN
  (``C, 2C, 4C, 8C, 16C`` channels, stride-2 downsampling, reflect padding, pre-activation blocks
  ``InstanceNorm -> LeakyReLU(0.2) -> conv`` with a residual pair per level) and, at the bottleneck, a 1x1x1
  projection to ``E`` channels, a learned position embedding ``(1, g^3, E)`` and the *intra-modal* transformer.
* **Modality masking**: a missing modality's features are set to zero at every level, whatever it was encoded
  from (the published ``MaskModal``); its bottleneck tokens then carry only its position embedding.
* **Inter-modal transformer** (``inter_transformer``): one sequence of ``M * g^3`` tokens (modalities
  concatenated in :attr:`MMFormerNet.fusion_order`), each modality's position embedding added, then a 1x1x1
  convolution ``M*E -> M*16C`` (``inter_proj``). The published code turns the token sequence back into a grid
  by a plain ``view(B, g, g, g, M*E)``: grid cell ``p`` holds tokens ``M*p .. M*p + M - 1`` of the sequence, so
  a cell mixes neighbouring tokens of one modality rather than the ``M`` modalities at one position. This
  module does the same (the released weights were trained with it).
* **Convolutional decoder** (:class:`FusionDecoder`, ``decoder``): at each level a fusion block (1x1x1, 3x3x3
  zero-padded, 1x1x1 pre-activation convolutions) merges the ``M`` masked modality maps (channels concatenated
  in ``fusion_order``); the bottleneck's input is the inter-modal output. Trilinear upsampling
  (``align_corners=True``), concatenation, one segmentation head per level (deep supervision).
* **Auxiliary per-modality decoder** (:class:`ModalityDecoder`, ``aux_decoder``; training only): one decoder,
  shared by all modalities, segments each modality from its own CNN features (the bottleneck *before* the
  intra-modal transformer), for every modality whatever the mask (published behaviour).

Transformers: pre-norm layers of :class:`SelfAttention` and MONAI's :class:`~monai.networks.blocks.MLPBlock`
(GELU, ``"vit"`` dropout), composed here rather than with MONAI's ``TransformerBlock`` because the published layer
adds the position embedding before every layer and applies one more dropout to the attention branch
(``PreNormDrop``). The attention is our own because MONAI's ``SABlock`` (the same function: one bias-free qkv
projection, heads split as ``(qkv, heads, dim)``, an output projection with bias) needs ``einops``, which is not
a dependency of this project.

Shapes and orders: input ``(B, sum(in_channels), H, W, D)`` with modality ``i`` =
:data:`~lckd_med.constants.MODALITIES` ``[i]`` (FLAIR, T1, T1ce, T2) and ``(H, W, D) == img_size`` exactly (the
position embeddings fix the window); masks ``(B, M)`` bool in the same order. Output: **logits** ``(B, 4, H, W,
D)`` over the published softmax classes (0 background, 1 NCR/NET, 2 oedema, 3 enhancing tumour = BraTS label 4);
the published model returns their softmax. Features (:meth:`MMFormerNet.encode`): the five CNN levels ``(B, M,
C_l, *S_l)``, full resolution first, then the intra-modal transformer output ``(B, M, E, g, g, g)``.

A masked modality's features are zeroed whatever they hold, so ``forward(x, mask) == decode(encode(x), mask)``
for any content of the missing channels, and :meth:`MMFormerNet.decode_subsets` evaluates every subset from one
encoding exactly.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from monai.networks.blocks import ADN, MLPBlock
from torch import nn

from lckd_med.constants import MODALITIES, NUM_MODALITIES
from lckd_med.networks.fusion import check_mask
from lckd_med.networks.model import MissingModalityNet, positive_int

__all__ = [
    "MMFormerNet",
    "MMFormerOutput",
    "HybridEncoder",
    "TokenTransformer",
    "SelfAttention",
    "PreActConv",
    "FusionDecoder",
    "ModalityDecoder",
    "PUBLISHED_MODALITY_ORDER",
    "PUBLISHED_FUSION_ORDER",
    "NUM_CLASSES",
]

#: Channel order of the published code's input and of every per-modality concatenation in it.
PUBLISHED_MODALITY_ORDER: tuple[str, ...] = ("flair", "t1ce", "t1", "t2")
#: The same as indices into :data:`~lckd_med.constants.MODALITIES`: the default ``fusion_order`` for BraTS.
PUBLISHED_FUSION_ORDER: tuple[int, ...] = tuple(MODALITIES.index(name) for name in PUBLISHED_MODALITY_ORDER)
#: Softmax classes of the published model: background, NCR/NET, oedema, enhancing tumour (BraTS label 4).
NUM_CLASSES = 4
#: Levels of the CNN (four stride-2 downsamplings: the window must be a multiple of 16).
NUM_LEVELS = 5
_SLOPE = 0.2  # LeakyReLU slope of every published block


class MMFormerOutput(NamedTuple):
    """Training outputs of :meth:`MMFormerNet.forward` with ``return_aux=True`` (the published ``is_training``).

    Attributes:
        logits: ``(B, 4, *S)`` fused prediction under the mask.
        aux_logits: ``(B, M, 4, *S)`` each modality's auxiliary prediction from its own CNN features (modality
            order), for every modality whatever the mask.
        deep_probs: four ``(B, 4, *S)`` *probabilities*: softmax of the decoder heads at levels 1..4 (finest
            first), upsampled trilinearly to full resolution. Probabilities because the published code upsamples
            after the softmax, which no logits reproduce exactly.
    """

    logits: torch.Tensor
    aux_logits: torch.Tensor
    deep_probs: tuple[torch.Tensor, ...]


class PreActConv(nn.Module):
    """``InstanceNorm -> LeakyReLU(0.2) -> Conv3d`` (the published ``general_conv3d_prenorm``): normalisation and
    activation first (MONAI's :class:`~monai.networks.blocks.ADN`; the activation in place, as published: the
    normalisation's output is a fresh tensor), then the convolution with ``padding = k // 2``. A 1x1x1 convolution
    pads nothing, so it skips the padding mode (torch would still call a reflect pad of width 0)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, padding_mode: str = "reflect"):
        super().__init__()
        act = ("leakyrelu", {"negative_slope": _SLOPE, "inplace": True})
        self.adn = ADN(ordering="NA", in_channels=in_ch, norm="instance", act=act, norm_dim=3)
        mode = padding_mode if kernel_size > 1 else "zeros"
        self.conv = nn.Conv3d(in_ch, out_ch, kernel_size, stride, kernel_size // 2, padding_mode=mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.adn(x))


class _Stage(nn.Module):
    """One encoder level: ``entry`` (stem conv at level 0, a stride-2 :class:`PreActConv` below), then
    ``y = e + body(e)`` with two :class:`PreActConv`."""

    def __init__(self, entry: nn.Module, channels: int):
        super().__init__()
        self.entry = entry
        self.body = nn.Sequential(PreActConv(channels, channels), PreActConv(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.entry(x)
        return x + self.body(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention: ``qkv`` (no bias) -> scaled dot-product attention (dropout on the weights) ->
    ``out_proj`` -> dropout; the layout and names of MONAI's ``SABlock`` (see the module docstring for why not
    that block). ``(B, N, dim) -> (B, N, dim)``."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out_proj = nn.Linear(dim, dim)
        self.drop_output = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.drop_output(self.out_proj(y.transpose(1, 2).reshape(b, n, d)))


class _TransformerLayer(nn.Module):
    """``x + drop(attn(norm(x)))`` then ``x + mlp(norm(x))`` (the published ``Residual(PreNormDrop(...))`` and
    ``Residual(PreNorm(FeedForward))``)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float):
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dropout)
        self.attn_drop = nn.Dropout(dropout)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim, dropout_rate=dropout, act="GELU", dropout_mode="vit")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn_drop(self.attn(self.attn_norm(x)))
        return x + self.mlp(self.mlp_norm(x))


class TokenTransformer(nn.Module):
    """``depth`` pre-norm transformer layers; the position embedding is added before each layer (published).

    Args:
        dim: token width ``E``.
        depth: number of layers.
        heads: attention heads (``dim`` divisible by it).
        mlp_dim: hidden width of the feed-forward block.
        dropout: dropout of attention weights, attention output (twice, as published) and feed-forward.
    """

    def __init__(self, dim: int, depth: int, heads: int, mlp_dim: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList([_TransformerLayer(dim, heads, mlp_dim, dropout) for _ in range(depth)])

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """``tokens (B, N, E)``, ``pos (1, N, E)`` -> ``(B, N, E)``."""
        for layer in self.layers:
            tokens = layer(tokens + pos)
        return tokens


class HybridEncoder(nn.Module):
    """One modality's encoder: a five-level CNN and the intra-modal transformer at its bottleneck.

    Args:
        in_channels: input channels of the modality.
        filters: channels of the five levels.
        embed_dim: token width ``E``.
        grid: bottleneck grid ``(g1, g2, g3)`` (window / 16); the position embedding has ``g1*g2*g3`` tokens.
        depth, heads, mlp_dim, dropout: of the :class:`TokenTransformer`.
    """

    def __init__(
        self,
        in_channels: int,
        filters: Sequence[int],
        embed_dim: int,
        grid: Sequence[int],
        depth: int,
        heads: int,
        mlp_dim: int,
        dropout: float,
    ):
        super().__init__()
        stem = nn.Conv3d(in_channels, filters[0], 3, 1, 1, padding_mode="reflect")
        entries = [stem] + [PreActConv(a, b, stride=2) for a, b in zip(filters[:-1], filters[1:], strict=True)]
        self.stages = nn.ModuleList([_Stage(e, c) for e, c in zip(entries, filters, strict=True)])
        self.grid = tuple(grid)
        self.to_tokens = nn.Conv3d(filters[-1], embed_dim, 1)
        self.pos_embedding = nn.Parameter(torch.zeros(1, math.prod(self.grid), embed_dim))
        self.transformer = TokenTransformer(embed_dim, depth, heads, mlp_dim, dropout)

    def cnn(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, in_channels, *S)`` -> the five CNN levels ``(B, filters[l], *S / 2^l)``."""
        levels = []
        for stage in self.stages:
            x = stage(x)
            levels.append(x)
        return levels

    def tokens(self, bottleneck: torch.Tensor) -> torch.Tensor:
        """CNN bottleneck ``(B, 16C, *grid)`` -> intra-modal transformer output ``(B, E, *grid)``."""
        t = self.to_tokens(bottleneck)
        b, e = t.shape[:2]
        t = self.transformer(t.flatten(2).transpose(1, 2), self.pos_embedding)  # tokens in (h, w, d) raster order
        return t.transpose(1, 2).reshape(b, e, *self.grid)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five CNN levels followed by :meth:`tokens` of the bottleneck (six tensors)."""
        levels = self.cnn(x)
        return [*levels, self.tokens(levels[-1])]


class _UpPath(nn.Module):
    """Decoder levels 3..0: ``h = up[t](upsample(h))``, ``h = out[t](merge[t](cat))`` with the level's skip map
    concatenated before (``skip_first``, the fusion decoder) or after (the auxiliary decoder) ``h``."""

    def __init__(self, filters: Sequence[int], skip_first: bool):
        super().__init__()
        self.skip_first = skip_first
        self.up = nn.ModuleList([PreActConv(filters[t + 1], filters[t]) for t in range(len(filters) - 1)])
        self.merge = nn.ModuleList([PreActConv(2 * filters[t], filters[t]) for t in range(len(filters) - 1)])
        self.out = nn.ModuleList([PreActConv(filters[t], filters[t], 1) for t in range(len(filters) - 1)])

    def step(self, t: int, h: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """From level ``t + 1`` to level ``t``."""
        h = self.up[t](_upsample(h, 2))
        h = torch.cat((skip, h) if self.skip_first else (h, skip), dim=1)
        return self.out[t](self.merge[t](h))


def _upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode="trilinear", align_corners=True)


class FusionDecoder(nn.Module):
    """The fused decoder: a fusion block per level on the ``M`` concatenated modality maps, the up path, a
    segmentation head per level.

    Args:
        filters: channels of the five levels.
        num_modalities: ``M`` (the fusion blocks take ``M * filters[l]`` channels).
        out_channels: classes.
    """

    def __init__(self, filters: Sequence[int], num_modalities: int, out_channels: int):
        super().__init__()
        self.fuse = nn.ModuleList(
            [
                nn.Sequential(
                    PreActConv(num_modalities * c, c, 1),
                    PreActConv(c, c, 3, padding_mode="zeros"),  # the published fusion block pads with zeros
                    PreActConv(c, c, 1),
                )
                for c in filters
            ]
        )
        self.up_path = _UpPath(filters, skip_first=True)
        self.heads = nn.ModuleList([nn.Conv3d(c, out_channels, 1) for c in filters])

    def forward(self, levels: Sequence[torch.Tensor], deep: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``levels[l]`` ``(B, M*filters[l], *S_l)`` (the bottleneck from the inter-modal stage) -> full-resolution
        logits and, with ``deep``, the probabilities of heads 1..4 upsampled to full resolution (finest first)."""
        top = len(levels) - 1
        h = self.fuse[top](levels[top])
        deep_probs = [self.heads[top](h).softmax(1)] if deep else []
        for t in range(top - 1, -1, -1):
            h = self.up_path.step(t, h, self.fuse[t](levels[t]))
            if deep and t > 0:
                deep_probs.append(self.heads[t](h).softmax(1))
        upsampled = [_upsample(p, 2 ** (top - i)) for i, p in enumerate(deep_probs)][::-1]
        return self.heads[0](h), upsampled


class ModalityDecoder(nn.Module):
    """The auxiliary decoder: one modality's five CNN levels -> logits (one head, no fusion)."""

    def __init__(self, filters: Sequence[int], out_channels: int):
        super().__init__()
        self.up_path = _UpPath(filters, skip_first=False)
        self.head = nn.Conv3d(filters[0], out_channels, 1)

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        h = levels[-1]
        for t in range(len(levels) - 2, -1, -1):
            h = self.up_path.step(t, h, levels[t])
        return self.head(h)


def _check_window(img_size: int | Sequence[int]) -> tuple[int, int, int]:
    sizes = (img_size,) * 3 if isinstance(img_size, int) and not isinstance(img_size, bool) else img_size
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or len(sizes) != 3:
        raise ValueError(f"img_size must be an int or 3 ints, got {img_size!r}")
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, int) or s < 32 or s % 16:
            raise ValueError(f"img_size entries must be multiples of 16, at least 32, got {img_size!r}")
    return (sizes[0], sizes[1], sizes[2])


class MMFormerNet(nn.Module):
    """mmFormer (see the module docstring); offers :class:`~lckd_med.networks.protocol.SegmentationNetwork`.

    Args:
        in_modalities: ``M``, one hybrid encoder each.
        in_channels: input channels of each modality (modality order); ``None`` -> one each.
        out_channels: softmax classes (4: background, NCR/NET, oedema, enhancing tumour).
        img_size: the window (int or 3 ints, multiples of 16, at least 32); the position embeddings have
            ``prod(img_size / 16)`` tokens, and every input must have exactly this size.
        base_filters: ``C``; the CNN levels have ``C, 2C, 4C, 8C, 16C`` channels.
        embed_dim: token width ``E`` of both transformers.
        mlp_dim: hidden width of the transformers' feed-forward blocks.
        num_heads: attention heads (``embed_dim`` divisible by it).
        depth: layers of each transformer (intra- and inter-modal).
        dropout: transformer dropout, in ``[0, 1)`` (training only).
        fusion_order: the order in which modality maps and tokens are concatenated for fusion, a permutation of
            ``range(M)``; ``None`` -> :data:`PUBLISHED_FUSION_ORDER` for four modalities (flair, t1ce, t1, t2:
            the released weights need it, as the inter-modal reshape depends on it), else ``range(M)``.

    Raises:
        ValueError / TypeError: any invalid argument, with the reason.
    """

    spatial_dims: int = 3
    #: The output is a softmax over the BraTS classes (:mod:`lckd_med.networks.outputs`): inference turns it into
    #: region probabilities and decides by argmax, as the published code.
    output_kind: ClassVar[str] = "classes"
    #: ``decode_subsets`` voxel budgets per pass (the same as the other networks').
    SUBSET_BATCH_VOXELS: int = MissingModalityNet.SUBSET_BATCH_VOXELS
    SUBSET_BATCH_VOXELS_CPU: int = MissingModalityNet.SUBSET_BATCH_VOXELS_CPU

    def __init__(
        self,
        *,
        in_modalities: int = NUM_MODALITIES,
        in_channels: Sequence[int] | None = None,
        out_channels: int = NUM_CLASSES,
        img_size: int | Sequence[int] = 128,
        base_filters: int = 8,
        embed_dim: int = 512,
        mlp_dim: int = 4096,
        num_heads: int = 8,
        depth: int = 1,
        dropout: float = 0.1,
        fusion_order: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.in_modalities = positive_int(in_modalities, "in_modalities")
        self.in_channels = MissingModalityNet._check_in_channels(in_channels, self.in_modalities)
        self.out_channels = positive_int(out_channels, "out_channels")
        self.img_size = _check_window(img_size)
        self.base_filters = positive_int(base_filters, "base_filters")
        self.embed_dim = positive_int(embed_dim, "embed_dim")
        self.mlp_dim = positive_int(mlp_dim, "mlp_dim")
        self.num_heads = positive_int(num_heads, "num_heads")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        self.depth = positive_int(depth, "depth")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.fusion_order = self._check_order(fusion_order, self.in_modalities)
        self.filters = tuple(self.base_filters * 2**level for level in range(NUM_LEVELS))
        self.grid = tuple(s // 16 for s in self.img_size)
        m, e = self.in_modalities, self.embed_dim

        self.encoders = nn.ModuleList(
            [
                HybridEncoder(c, self.filters, e, self.grid, self.depth, self.num_heads, self.mlp_dim, self.dropout)
                for c in self.in_channels
            ]
        )
        self.inter_transformer = TokenTransformer(e, self.depth, self.num_heads, self.mlp_dim, self.dropout)
        self.inter_proj = nn.Conv3d(m * e, m * self.filters[-1], 1)
        self.decoder = FusionDecoder(self.filters, m, self.out_channels)
        self.aux_decoder = ModalityDecoder(self.filters, self.out_channels)
        for module in self.modules():  # published init: Kaiming-normal conv weights; position embeddings zero
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight)

    @staticmethod
    def _check_order(order: Sequence[int] | None, num: int) -> tuple[int, ...]:
        if order is None:
            return PUBLISHED_FUSION_ORDER if num == len(PUBLISHED_FUSION_ORDER) else tuple(range(num))
        if isinstance(order, (str, bytes)) or not isinstance(order, Sequence):
            raise ValueError(f"fusion_order must be a permutation of range({num}), got {order!r}")
        if any(isinstance(i, bool) or not isinstance(i, int) for i in order) or sorted(order) != list(range(num)):
            raise ValueError(f"fusion_order must be a permutation of range({num}), got {order!r}")
        return tuple(order)

    # ------------------------------------------------------------------ configuration
    @property
    def hparams(self) -> dict[str, Any]:
        """Every constructor argument, JSON-serialisable (tuples as lists); :meth:`from_hparams` inverts it."""
        return {
            "in_modalities": self.in_modalities,
            "in_channels": list(self.in_channels),
            "out_channels": self.out_channels,
            "img_size": list(self.img_size),
            "base_filters": self.base_filters,
            "embed_dim": self.embed_dim,
            "mlp_dim": self.mlp_dim,
            "num_heads": self.num_heads,
            "depth": self.depth,
            "dropout": self.dropout,
            "fusion_order": list(self.fusion_order),
        }

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any]) -> MMFormerNet:
        """An untrained network built from :attr:`hparams`.

        Raises:
            TypeError: ``hparams`` is not a mapping.
            ValueError: unknown keys or invalid values.
        """
        if not isinstance(hparams, Mapping):
            raise TypeError(f"hparams must be a mapping, got {type(hparams).__name__}")
        allowed = {p.name for p in inspect.signature(cls).parameters.values()}
        unknown = sorted(set(hparams) - allowed)
        if unknown:
            raise ValueError(f"unknown MMFormerNet hparams {unknown}; allowed: {sorted(allowed)}")
        return cls(**dict(hparams))

    @property
    def size_divisor(self) -> tuple[int, ...]:
        """The window itself: inputs must equal :attr:`img_size` (the position embeddings fix it)."""
        return self.img_size

    @property
    def total_channels(self) -> int:
        return sum(self.in_channels)

    # ------------------------------------------------------------------ checks
    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 5 or x.shape[1] != self.total_channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"input must be (B, {self.total_channels}, H, W, D), got {shape}")
        if tuple(x.shape[2:]) != self.img_size:
            raise ValueError(
                f"mmFormer's position embeddings fix the window to {self.img_size}; got spatial size "
                f"{tuple(x.shape[2:])} (run it through a sliding window of that size)"
            )
        return x if type(x) is torch.Tensor else x.as_subclass(torch.Tensor)

    def _feature_shapes(self) -> list[tuple[int, ...]]:
        sizes = [tuple(s // 2**level for s in self.img_size) for level in range(NUM_LEVELS)]
        return [(self.in_modalities, c, *s) for c, s in zip(self.filters, sizes, strict=True)] + [
            (self.in_modalities, self.embed_dim, *self.grid)
        ]

    def _check_features(self, features: Sequence[torch.Tensor]) -> int:
        expected = self._feature_shapes()
        if not isinstance(features, Sequence) or len(features) != len(expected):
            n = len(features) if isinstance(features, Sequence) else type(features).__name__
            raise ValueError(f"features must be a list of {len(expected)} tensors (encode's output), got {n}")
        batch = features[0].shape[0]
        for i, (f, shape) in enumerate(zip(features, expected, strict=True)):
            if not isinstance(f, torch.Tensor) or tuple(f.shape) != (batch, *shape):
                got = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
                raise ValueError(f"features[{i}] must be {(batch, *shape)}, got {got}")
        return batch

    def _channel_slices(self) -> list[slice]:
        starts = [0]
        for c in self.in_channels:
            starts.append(starts[-1] + c)
        return [slice(a, b) for a, b in zip(starts[:-1], starts[1:], strict=True)]

    # ------------------------------------------------------------------ encoder
    def encode(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Encode every modality with its own hybrid encoder (each sees only its channels).

        Args:
            x: ``(B, sum(in_channels), *img_size)``, modality order.
            mask: optional ``(B, M)`` bool; missing (sample, modality) pairs are not encoded and hold zeros
                (:meth:`decode` zeroes them anyway). ``None`` encodes everything.

        Returns:
            Six tensors: the CNN levels ``(B, M, filters[l], *img_size / 2^l)`` (``l = 0..4``) and the
            intra-modal transformer output ``(B, M, embed_dim, *img_size / 16)``.
        """
        return self._encode(self._check_input(x), mask)

    def _encode(self, x: torch.Tensor, mask: torch.Tensor | None) -> list[torch.Tensor]:
        batch = x.shape[0]
        todo = None if mask is None else check_mask(mask, batch, self.in_modalities, require_any=False).to(x.device)
        per_mod: list[list[torch.Tensor] | None] = []
        for m, (enc, channels) in enumerate(zip(self.encoders, self._channel_slices(), strict=True)):
            idx = None if todo is None else torch.nonzero(todo[:, m]).flatten()
            if idx is None or idx.numel() == batch:
                per_mod.append(enc(x[:, channels]))
            elif idx.numel() == 0:
                per_mod.append(None)
            else:
                per_mod.append(
                    [f.new_zeros((batch, *f.shape[1:])).index_copy(0, idx, f) for f in enc(x[idx, channels])]
                )
        ref = next((p for p in per_mod if p is not None), None)
        if ref is None:  # nothing to encode: zeros of the right shapes
            param = self.inter_proj.weight
            return [param.new_zeros((batch, *shape)) for shape in self._feature_shapes()]
        return [
            torch.stack([p[i] if p is not None else torch.zeros_like(ref[i]) for p in per_mod], dim=1)
            for i in range(len(ref))
        ]

    # ------------------------------------------------------------------ masking + inter-modal + decoder
    def _fused_levels(self, features: Sequence[torch.Tensor], mask: torch.Tensor) -> list[torch.Tensor]:
        """Masked features (zeros where missing) in ``fusion_order``, channels concatenated per level; the
        bottleneck through the inter-modal transformer."""
        keep = mask[:, list(self.fusion_order)]
        order = list(self.fusion_order)

        def masked(f: torch.Tensor) -> torch.Tensor:  # (B, M, C, *S) -> (B, M, C, *S) in fusion order, zeroed
            # indexing copies, so the fill may be in place; a fill, not a product: inf or nan still give zeros
            return f[:, order].masked_fill_(~keep.view(*keep.shape, *([1] * (f.dim() - 2))), 0)

        levels = [masked(f).flatten(1, 2) for f in features[: NUM_LEVELS - 1]]
        tokens = masked(features[-1])  # (B, M, E, *grid)
        b, m, e = tokens.shape[:3]
        seq = tokens.flatten(3).transpose(2, 3).reshape(b, -1, e)  # (B, M*N, E), modality blocks in fusion order
        pos = torch.cat([self.encoders[i].pos_embedding for i in order], dim=1)
        seq = self.inter_transformer(seq, pos)
        # the published reshape: cell p of the grid holds tokens M*p .. M*p + M - 1 (see the module docstring)
        grid = seq.reshape(b, *self.grid, m * e).permute(0, 4, 1, 2, 3)
        levels.append(self.inter_proj(grid))
        return levels

    def decode(
        self, features: Sequence[torch.Tensor], mask: torch.Tensor, *, return_deep: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Decode :meth:`encode`'s features under an availability mask.

        Args:
            features: the six tensors of :meth:`encode`.
            mask: ``(B, M)`` bool (``(M,)`` broadcasts); every sample needs one available modality.
            return_deep: also return the deep-supervision probabilities (see :class:`MMFormerOutput`).

        Returns:
            ``(B, 4, *img_size)`` logits (or ``(logits, deep_probs)``).
        """
        batch = self._check_features(features)
        mask = check_mask(mask, batch, self.in_modalities).to(features[0].device)
        logits, deep = self.decoder(self._fused_levels(features, mask), deep=return_deep)
        return (logits, deep) if return_deep else logits

    def decode_subsets(
        self, features: Sequence[torch.Tensor], masks: torch.Tensor, chunk_size: int | None = None
    ) -> torch.Tensor:
        """Decode one encoding under ``K`` masks, ``chunk_size`` masks per pass (features repeated along the
        batch; ``None``: as many as fit :attr:`SUBSET_BATCH_VOXELS` / :attr:`SUBSET_BATCH_VOXELS_CPU`).

        Args:
            features: :meth:`encode`'s output with every modality encoded (``mask=None``).
            masks: ``(K, M)`` bool, each row with at least one ``True``.
            chunk_size: masks per pass, or ``None``.

        Returns:
            ``(B, K, 4, *img_size)`` logits; ``[:, k]`` equals ``decode(features, masks[k])``.
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
            cpu = features[0].device.type == "cpu"
            budget = self.SUBSET_BATCH_VOXELS_CPU if cpu else self.SUBSET_BATCH_VOXELS
            chunk_size = max(1, min(num, budget // (batch * math.prod(self.img_size))))
        positive_int(chunk_size, "chunk_size")
        masks = masks.to(features[0].device)
        outs = []
        for start in range(0, num, chunk_size):
            chunk = masks[start : start + chunk_size]
            k = chunk.shape[0]
            feats = [f.repeat(k, *([1] * (f.dim() - 1))) for f in features] if k > 1 else list(features)
            logits, _ = self.decoder(self._fused_levels(feats, chunk.repeat_interleave(batch, dim=0)))
            outs.append(logits.reshape(k, batch, *logits.shape[1:]).transpose(0, 1))
        return torch.cat(outs, dim=1)

    def decode_aux(self, features: Sequence[torch.Tensor], modalities: Sequence[int] | None = None) -> torch.Tensor:
        """The auxiliary decoder on each modality's own CNN levels (no mask: published).

        Args:
            features: :meth:`encode`'s output (the selected modalities encoded).
            modalities: indices (modality order) to decode; ``None`` = all.

        Returns:
            ``(B, len(modalities), 4, *img_size)`` logits.
        """
        self._check_features(features)
        which = range(self.in_modalities) if modalities is None else modalities
        outs = [self.aux_decoder([f[:, m] for f in features[:NUM_LEVELS]]) for m in which]
        return torch.stack(outs, dim=1)

    # ------------------------------------------------------------------ forward
    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, *, return_aux: bool = False
    ) -> torch.Tensor | MMFormerOutput:
        """Segment ``x`` given which sequences are available.

        Args:
            x: ``(B, sum(in_channels), *img_size)``, modality order; missing channels may hold anything.
            mask: ``(B, M)`` bool availability (``(M,)`` broadcasts); ``None`` = all available.
            return_aux: the training outputs (published ``is_training``): every modality is encoded (the
                auxiliary decoder reads all of them) and an :class:`MMFormerOutput` is returned.

        Returns:
            ``(B, 4, *img_size)`` logits, or an :class:`MMFormerOutput`.
        """
        x = self._check_input(x)
        batch = x.shape[0]
        if mask is None:
            mask = torch.ones(batch, self.in_modalities, dtype=torch.bool, device=x.device)
        mask = check_mask(mask, batch, self.in_modalities).to(x.device)
        features = self._encode(x, None if return_aux else mask)
        logits, deep = self.decoder(self._fused_levels(features, mask), deep=return_aux)
        if not return_aux:
            return logits
        return MMFormerOutput(logits, self.decode_aux(features), tuple(deep))
