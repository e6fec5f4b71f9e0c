"""Published mmFormer weights -> :class:`~lckd_med.networks.mmformer.MMFormerNet` state dict.

The published training script (YaoZhang93/mmFormer, ``mmformer/train.py`` at b18663a) saves
``{'epoch', 'state_dict', 'optim_dict'}`` where ``state_dict`` comes from a ``torch.nn.DataParallel`` model, so
every key starts with ``module.``. :func:`mmformer_state_dict_from_published` takes what ``torch.load`` returns
for such a file (the wrapper or the bare state dict, with or without the prefix) and renames every tensor to this
project's layout. No tensor is changed:

* per-modality parts (``flair_encoder``, ``t1ce_pos``, ...) go to the encoder of that modality in
  :data:`~lckd_med.constants.MODALITIES` order (published flair, t1ce, t1, t2 -> ours flair, t1, t1ce, t2);
* the fused parts keep the published concatenation order, which the network's ``fusion_order`` (default
  :data:`~lckd_med.networks.mmformer.PUBLISHED_FUSION_ORDER`) reproduces, so their weights need no permutation;
* the four ``*_decode_conv`` convolutions, defined in the published model but never called in its ``forward``
  (they receive no gradient and keep their initial values), are checked and dropped.

Anything else (a key the published model does not have, a missing one, a shape that differs from the network
the weights are meant for) is refused with one line naming the key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from lckd_med.constants import MODALITIES
from lckd_med.networks.mmformer import PUBLISHED_FUSION_ORDER, PUBLISHED_MODALITY_ORDER, MMFormerNet

__all__ = [
    "mmformer_state_dict_from_published",
    "mmformer_hparams_from_published",
    "published_key_map",
    "PUBLISHED_SOURCE",
    "PUBLISHED_NUM_HEADS",
    "UNUSED_PUBLISHED_KEYS",
]

#: The code the mapping was written from and checked against (tests/fixtures/mmformer/).
PUBLISHED_SOURCE = "YaoZhang93/mmFormer@b18663adbfd0323656083e0470420c8c715c1782"

#: Attention heads of the published transformers (``mmformer.py``: ``num_heads=8``); the weights do not record it.
PUBLISHED_NUM_HEADS = 8

_MODALITY = "|".join(PUBLISHED_MODALITY_ORDER)
#: Published keys without a counterpart: parameters of convolutions the published ``forward`` never calls.
UNUSED_PUBLISHED_KEYS = re.compile(rf"^({_MODALITY})_decode_conv\.(weight|bias)$")

# Transformer internals: published ``Residual(PreNormDrop(SelfAttention))`` / ``Residual(PreNorm(FeedForward))``.
_TRANSFORMER = [
    (r"cross_attention_list\.(\d+)\.fn\.norm\.", r"layers.\1.attn_norm."),
    (r"cross_attention_list\.(\d+)\.fn\.fn\.qkv\.", r"layers.\1.attn.qkv."),
    (r"cross_attention_list\.(\d+)\.fn\.fn\.proj\.", r"layers.\1.attn.out_proj."),
    (r"cross_ffn_list\.(\d+)\.fn\.norm\.", r"layers.\1.mlp_norm."),
    (r"cross_ffn_list\.(\d+)\.fn\.fn\.net\.0\.", r"layers.\1.mlp.linear1."),
    (r"cross_ffn_list\.(\d+)\.fn\.fn\.net\.3\.", r"layers.\1.mlp.linear2."),
]


_DECODERS = {"fuse": "decoder", "sep": "aux_decoder"}
_UP_PARTS = {"c1": "up", "c2": "merge", "out": "out"}  # conv after upsampling, after concatenation, 1x1x1


def _level(match: re.Match, group: int, offset: int = -1) -> str:
    return str(int(match.group(group)) + offset)


def _modality(name: str) -> str:
    return str(MODALITIES.index(name))


# (published pattern without ``module.``, function of the match -> our key); the first match wins
_RULES: list[tuple[re.Pattern, Any]] = [
    (re.compile(rf"^({_MODALITY})_pos$"), lambda m: f"encoders.{_modality(m[1])}.pos_embedding"),
    (
        re.compile(rf"^({_MODALITY})_encoder\.e1_c1\.(weight|bias)$"),
        lambda m: f"encoders.{_modality(m[1])}.stages.0.entry.{m[2]}",
    ),
    (
        re.compile(rf"^({_MODALITY})_encoder\.e([2-5])_c1\.conv\.(weight|bias)$"),
        lambda m: f"encoders.{_modality(m[1])}.stages.{_level(m, 2)}.entry.conv.{m[3]}",
    ),
    (
        re.compile(rf"^({_MODALITY})_encoder\.e([1-5])_c([23])\.conv\.(weight|bias)$"),
        lambda m: f"encoders.{_modality(m[1])}.stages.{_level(m, 2)}.body.{_level(m, 3, -2)}.conv.{m[4]}",
    ),
    (
        re.compile(rf"^({_MODALITY})_encode_conv\.(weight|bias)$"),
        lambda m: f"encoders.{_modality(m[1])}.to_tokens.{m[2]}",
    ),
    (
        re.compile(rf"^({_MODALITY})_transformer\.(.+)$"),
        lambda m: f"encoders.{_modality(m[1])}.transformer.{_sub(_TRANSFORMER, m[2])}",
    ),
    (re.compile(r"^multimodal_transformer\.(.+)$"), lambda m: f"inter_transformer.{_sub(_TRANSFORMER, m[1])}"),
    (re.compile(r"^multimodal_decode_conv\.(weight|bias)$"), lambda m: f"inter_proj.{m[1]}"),
    (
        re.compile(r"^decoder_fuse\.RFM([1-5])\.fusion_layer\.([0-2])\.conv\.(weight|bias)$"),
        lambda m: f"decoder.fuse.{_level(m, 1)}.{m[2]}.conv.{m[3]}",
    ),
    (re.compile(r"^decoder_fuse\.seg_layer\.(weight|bias)$"), lambda m: f"decoder.heads.0.{m[1]}"),
    (re.compile(r"^decoder_fuse\.seg_d([1-4])\.(weight|bias)$"), lambda m: f"decoder.heads.{m[1]}.{m[2]}"),
    (
        re.compile(r"^decoder_(fuse|sep)\.d([1-4])_(c1|c2|out)\.conv\.(weight|bias)$"),
        lambda m: f"{_DECODERS[m[1]]}.up_path.{_UP_PARTS[m[3]]}.{_level(m, 2)}.conv.{m[4]}",
    ),
    (re.compile(r"^decoder_sep\.seg_layer\.(weight|bias)$"), lambda m: f"aux_decoder.head.{m[1]}"),
]


def _sub(rules: list[tuple[str, str]], rest: str) -> str:
    for pattern, repl in rules:
        new, n = re.subn(rf"^{pattern}", repl, rest)
        if n:
            return new
    return "?" + rest  # no counterpart: reported as unexpected by the caller


def published_key_map(key: str) -> str | None:
    """This project's name for a published key (without ``module.``); ``None`` if it has no counterpart
    (:data:`UNUSED_PUBLISHED_KEYS` or an unknown name)."""
    for pattern, target in _RULES:
        match = pattern.match(key)
        if match:
            ours = target(match)
            return None if "?" in ours else ours
    return None


def _unwrap(obj: Any) -> tuple[dict[str, Any], str]:
    """The state dict with bare keys, and the prefix the file's keys had (``"module."`` or ``""``)."""
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(
            "not an mmFormer checkpoint: expected the published {'epoch', 'state_dict', 'optim_dict'} or a state "
            f"dict, got {type(obj).__name__}"
        )
    keys = list(obj)
    if any(not isinstance(k, str) for k in keys):
        raise ValueError("not an mmFormer checkpoint: state dict keys must be strings")
    prefixed = [k.startswith("module.") for k in keys]
    if any(prefixed) and not all(prefixed):
        odd = keys[prefixed.index(False)]
        raise ValueError(f"mmFormer checkpoint mixes 'module.'-prefixed and bare keys (e.g. {odd!r})")
    prefix = "module." if all(prefixed) else ""
    return {k.removeprefix(prefix): v for k, v in obj.items()}, prefix


def mmformer_hparams_from_published(obj: Any) -> dict[str, Any]:
    """:attr:`MMFormerNet.hparams` of the network a published-layout checkpoint fits, read from its shapes: window
    ``img_size`` (a cube of ``16 g`` with ``g^3`` tokens in ``flair_pos``), ``embed_dim`` (its width),
    ``base_filters`` (``flair_encoder.e1_c1``), ``mlp_dim`` and ``depth`` (the FLAIR transformer's feed-forward
    width and number of layers), ``out_channels`` (``decoder_fuse.seg_layer``). The published file gives the
    published configuration (``MMFormerNet()``); a smaller network saved in the published layout gives its own.
    ``num_heads`` is not in the weights: :data:`PUBLISHED_NUM_HEADS`. A size whose key is absent keeps the published
    value (the conversion then names the missing key).

    Raises:
        ValueError: not an mmFormer checkpoint, or shapes that fit no :class:`MMFormerNet` (one line).
    """
    state, _ = _unwrap(obj)
    defaults = MMFormerNet.__init__.__kwdefaults__ or {}

    def shape(key: str) -> tuple[int, ...] | None:
        value = state.get(key)
        return tuple(value.shape) if isinstance(value, torch.Tensor) else None

    hparams: dict[str, Any] = {}
    pos = shape("flair_pos")
    if pos is not None and len(pos) == 3:
        grid = round(pos[1] ** (1 / 3))
        if grid**3 != pos[1]:
            raise ValueError(f"mmFormer key 'flair_pos' has {pos[1]} tokens, not a cube: no cubic window fits it")
        hparams.update(img_size=16 * grid, embed_dim=pos[2])
    entry = shape("flair_encoder.e1_c1.weight")
    if entry is not None:
        hparams["base_filters"] = entry[0]
    ffn = shape("flair_transformer.cross_ffn_list.0.fn.fn.net.0.weight")
    if ffn is not None:
        hparams["mlp_dim"] = ffn[0]
    layers = {int(m[1]) for k in state if (m := re.match(r"^flair_transformer\.cross_attention_list\.(\d+)\.", k))}
    if layers:
        hparams["depth"] = max(layers) + 1
    head = shape("decoder_fuse.seg_layer.weight")
    if head is not None:
        hparams["out_channels"] = head[0]
    hparams["num_heads"] = PUBLISHED_NUM_HEADS
    try:
        with torch.device("meta"):
            return MMFormerNet(**{**defaults, **hparams}).hparams
    except (TypeError, ValueError) as e:
        raise ValueError(f"mmFormer checkpoint: its shapes fit no MMFormerNet ({e})") from None


def mmformer_state_dict_from_published(obj: Any, hparams: Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """Convert a published mmFormer checkpoint into a state dict for :class:`MMFormerNet`.

    Args:
        obj: what ``torch.load`` returns for a published file: ``{'epoch', 'state_dict', 'optim_dict'}`` or the
            state dict itself, keys with or without ``module.``.
        hparams: :attr:`MMFormerNet.hparams` of the network to load into (``None``: the published configuration,
            ``MMFormerNet()``); shapes are checked against it. Its ``fusion_order`` must be the published one.

    Returns:
        ``{our key: tensor}`` for ``MMFormerNet.from_hparams(hparams).load_state_dict(..., strict=True)``; the
        tensors are the published ones (not copied).

    Raises:
        ValueError: one line naming the first key that is unexpected, missing, not a tensor or of the wrong shape,
            or a wrong ``fusion_order``.
    """
    with torch.device("meta"):  # shapes only, no memory
        net = MMFormerNet() if hparams is None else MMFormerNet.from_hparams(hparams)
    if net.fusion_order != PUBLISHED_FUSION_ORDER:
        raise ValueError(
            f"published mmFormer weights need fusion_order={list(PUBLISHED_FUSION_ORDER)} (flair, t1ce, t1, t2), "
            f"the network has {list(net.fusion_order)}"
        )
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    state, prefix = _unwrap(obj)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = prefix + key  # as the file spells it
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"mmFormer checkpoint key {name!r} holds a {type(value).__name__}, not a tensor")
        if UNUSED_PUBLISHED_KEYS.match(key):
            _check_unused(name, value, net)
            continue
        ours = published_key_map(key)
        if ours is None or ours not in expected:
            raise ValueError(f"unexpected key {name!r}: not part of the published mmFormer model ({PUBLISHED_SOURCE})")
        if tuple(value.shape) != expected[ours]:
            raise ValueError(
                f"key {name!r} has shape {tuple(value.shape)}, the network ({ours}) needs {expected[ours]} "
                f"(img_size={list(net.img_size)}, embed_dim={net.embed_dim}, base_filters={net.base_filters})"
            )
        out[ours] = value
    missing = [k for k in expected if k not in out]
    if missing:
        raise ValueError(f"mmFormer checkpoint lacks the weights of {missing[0]!r} ({len(missing)} tensors missing)")
    unused = [f"{m}_decode_conv.{p}" for m in PUBLISHED_MODALITY_ORDER for p in ("weight", "bias")]
    absent = [k for k in unused if k not in state]
    if absent:
        raise ValueError(
            f"mmFormer checkpoint lacks key {prefix + absent[0]!r} of the published model ({PUBLISHED_SOURCE})"
        )
    return out


def _check_unused(key: str, value: torch.Tensor, net: MMFormerNet) -> None:
    out_ch, in_ch = net.filters[-1], net.embed_dim
    shape = (out_ch, in_ch, 1, 1, 1) if key.endswith("weight") else (out_ch,)
    if tuple(value.shape) != shape:
        raise ValueError(f"key {key!r} has shape {tuple(value.shape)}, the published model has {shape}")
