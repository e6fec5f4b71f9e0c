"""Published RFNet checkpoints (dyh127/RFNet) -> state dicts of :class:`~lckd_med.networks.rfnet.RFNet`.

The authors saved ``{'epoch', 'state_dict', 'optim_dict'}`` from a ``torch.nn.DataParallel`` model (train.py:211-216),
so every key starts with ``module.``; the network is ``models.Model(num_cls=4)`` (5 classes for BraTS2015), 288
tensors, 8,984,960 parameters, float32. This module maps those keys onto this project's names, pure functions of
what ``torch.load`` returns (no file access, no network built on real memory).

What the mapping does besides renaming:

* **Modality order.** The published channel order is (flair, t1ce, t1, t2) (:data:`PUBLISHED_MODALITIES`); this
  project's is :data:`~lckd_med.constants.MODALITIES` (flair, t1, t1ce, t2). Encoders are per modality, so each
  published encoder goes to the slot of its modality; every layer that reads all modalities concatenated
  (modality-major: the fusion's shortcut, the region maps' embedding, the first modality-weight layer) has its input
  channel blocks permuted, and the modality-weight layer that outputs one weight per modality has its rows permuted.
* **Layer types.** The published modality-weight MLP is made of 1x1x1 convolutions on pooled vectors; here it is
  ``nn.Linear``, so those weights lose their three trailing unit axes.

Anything unexpected (an unknown or missing key, a shape that does not match) is refused with one line naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from lckd_med.constants import MODALITIES
from lckd_med.networks.rfnet import PUBLISHED_RECIPE, RFNET_FILTERS, RFNet

__all__ = [
    "PUBLISHED_MODALITIES",
    "published_key_map",
    "rfnet_hparams_from_published",
    "rfnet_state_dict_from_published",
]

#: Channel (and encoder) order of the published model.
PUBLISHED_MODALITIES: tuple[str, ...] = tuple(PUBLISHED_RECIPE["modalities"])
#: Key of the class head, whose rows give the number of classes.
_HEAD_KEY = "decoder_fuse.seg_layer.weight"

# transforms of one tensor: plain copy, permute input-channel blocks (dim 1), 1x1x1 conv -> Linear with input
# blocks permuted, 1x1x1 conv -> Linear with rows (dim 0) permuted
_COPY, _PERMUTE_IN, _LINEAR_PERMUTE_IN, _LINEAR_PERMUTE_OUT = "copy", "permute_in", "linear_in", "linear_out"


def published_key_map(num_classes: int = 4) -> dict[str, tuple[str, str]]:
    """Published key (without ``module.``) -> (this project's key, transform), in published order.

    Transforms: ``"copy"``; ``"permute_in"`` (input-channel blocks of ``C`` reordered from the published modality
    order to this project's); ``"linear_in"`` / ``"linear_out"`` (a 1x1x1 convolution weight becomes a Linear
    weight, with input blocks / output rows reordered).
    """
    layers: list[tuple[str, str, str]] = []  # (published layer, our layer, transform of the weight)
    for pub in PUBLISHED_MODALITIES:
        ours = f"encoders.{MODALITIES.index(pub)}.stages"
        for level in range(len(RFNET_FILTERS)):
            e = f"{pub}_encoder.e{level + 1}"
            layers += [
                (f"{e}_c1.conv", f"{ours}.{level}.down.conv", _COPY),
                (f"{e}_c2.conv", f"{ours}.{level}.res.0.conv", _COPY),
                (f"{e}_c3.conv", f"{ours}.{level}.res.1.conv", _COPY),
            ]
    for pub, ours in (("decoder_fuse", "decoder"), ("decoder_sep", "separate_decoder")):
        for k in reversed(range(1, len(RFNET_FILTERS))):
            layers += [
                (f"{pub}.d{k}_c1.conv", f"{ours}.stages.{k - 1}.up.conv", _COPY),
                (f"{pub}.d{k}_c2.conv", f"{ours}.stages.{k - 1}.merge.conv", _COPY),
                (f"{pub}.d{k}_out.conv", f"{ours}.stages.{k - 1}.out.conv", _COPY),
            ]
        layers.append((f"{pub}.seg_layer", f"{ours}.head", _COPY))
        if pub == "decoder_sep":
            continue
        for k in reversed(range(1, len(RFNET_FILTERS) + 1)):
            rfm, fusion = f"{pub}.RFM{k}", f"fusions.{k - 1}"
            for r in range(num_classes):
                layers += [
                    (f"{rfm}.modal_fusion.{r}.weight_layer.0", f"{fusion}.modality_weights.{r}.0", _LINEAR_PERMUTE_IN),
                    (f"{rfm}.modal_fusion.{r}.weight_layer.2", f"{fusion}.modality_weights.{r}.2", _LINEAR_PERMUTE_OUT),
                ]
            for j in range(3):
                layers.append((f"{rfm}.region_fusion.fusion_layer.{j}.conv", f"{fusion}.regions.{j}.conv", _COPY))
            for j in range(3):
                layers.append(
                    (f"{rfm}.short_cut.{j}.conv", f"{fusion}.shortcut.{j}.conv", _PERMUTE_IN if j == 0 else _COPY)
                )
        for k in reversed(range(1, len(RFNET_FILTERS) + 1)):
            prm, head = f"{pub}.prm_generator{k}", f"region_maps.{k - 1}"
            for j in range(3):
                layers.append(
                    (f"{prm}.embedding_layer.{j}.conv", f"{head}.embed.{j}.conv", _PERMUTE_IN if j == 0 else _COPY)
                )
            layers += [
                (f"{prm}.prm_layer.0.conv", f"{head}.classify.0.conv", _COPY),
                (f"{prm}.prm_layer.1", f"{head}.classify.1", _COPY),
            ]
    table: dict[str, tuple[str, str]] = {}
    for pub, ours, kind in layers:
        table[f"{pub}.weight"] = (f"{ours}.weight", kind)
        # a bias follows its weight; only the modality-weight rows reorder it
        table[f"{pub}.bias"] = (f"{ours}.bias", kind if kind == _LINEAR_PERMUTE_OUT else _COPY)
    return table


def _published_state(obj: Any) -> dict[str, torch.Tensor]:
    """The published state dict inside ``obj``, keys without ``module.``."""
    if isinstance(obj, Mapping) and "state_dict" in obj:
        state = obj["state_dict"]
    else:
        state = obj
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            "not a published RFNet checkpoint: expected {'epoch', 'state_dict', 'optim_dict'} or a state dict of "
            f"tensors, got {type(obj).__name__}"
            + (f" with keys {sorted(map(str, obj))[:5]}" if isinstance(obj, Mapping) else "")
        )
    prefix = "module."
    if all(str(k).startswith(prefix) for k in state):
        return {str(k)[len(prefix) :]: v for k, v in state.items()}
    return {str(k): v for k, v in state.items()}


def _num_classes(state: Mapping[str, torch.Tensor]) -> int:
    head = state.get(_HEAD_KEY)
    if head is None:
        raise ValueError(f"not a published RFNet checkpoint: key {_HEAD_KEY!r} is missing")
    if head.dim() != 5 or head.shape[0] < 2:
        raise ValueError(
            f"published RFNet key {_HEAD_KEY!r} has shape {tuple(head.shape)}; expected (classes, 16, 1, 1, 1)"
        )
    return int(head.shape[0])


#: Published keys whose first axis gives a width: ``filters`` per level (the FLAIR encoder's entry convolutions),
#: ``fusion_hidden`` and ``region_hidden``.
_WIDTH_KEYS = {
    "filters": tuple(f"flair_encoder.e{level + 1}_c1.conv.weight" for level in range(len(RFNET_FILTERS))),
    "fusion_hidden": "decoder_fuse.RFM1.modal_fusion.0.weight_layer.0.weight",
    "region_hidden": "decoder_fuse.prm_generator1.prm_layer.0.conv.weight",
}


def rfnet_hparams_from_published(obj: Any) -> dict[str, Any]:
    """:attr:`RFNet.hparams <lckd_med.networks.rfnet.RFNet.hparams>` of the network a published-layout checkpoint
    fits: the number of classes read from the class head (4, or 5 for BraTS2015), the channels per level and the two
    hidden widths from the first axis of :data:`_WIDTH_KEYS` (the published file gives the published architecture;
    a smaller network saved in the published layout gives its own sizes). A width whose key is absent keeps the
    published value (the conversion then names the missing key)."""
    state = _published_state(obj)
    num_classes = _num_classes(state)

    def width(key: str, default: int) -> int:
        value = state.get(key)
        return int(value.shape[0]) if isinstance(value, torch.Tensor) and value.dim() >= 1 else default

    filters = [width(k, d) for k, d in zip(_WIDTH_KEYS["filters"], RFNET_FILTERS, strict=True)]
    with torch.device("meta"):  # meta tensors allocate nothing
        return RFNet(
            out_channels=num_classes,
            filters=filters,
            fusion_hidden=width(_WIDTH_KEYS["fusion_hidden"], 128),
            region_hidden=width(_WIDTH_KEYS["region_hidden"], 16),
        ).hparams


def _block_index(channels: int, extra: int) -> torch.Tensor:
    """Input-channel indices taking the published modality blocks of ``channels`` into this project's order
    (``extra`` trailing channels kept in place)."""
    blocks = [
        torch.arange(p * channels, (p + 1) * channels) for p in (PUBLISHED_MODALITIES.index(m) for m in MODALITIES)
    ]
    tail = torch.arange(len(MODALITIES) * channels, len(MODALITIES) * channels + extra)
    return torch.cat([*blocks, tail])


def _convert(value: torch.Tensor, kind: str) -> torch.Tensor:
    num_mod = len(MODALITIES)
    if kind == _COPY:
        return value.contiguous()
    if kind == _PERMUTE_IN:
        return value[:, _block_index(value.shape[1] // num_mod, 0)].contiguous()
    if kind == _LINEAR_PERMUTE_IN:
        weight = value.reshape(value.shape[0], value.shape[1])
        return weight[:, _block_index((weight.shape[1] - 1) // num_mod, 1)].contiguous()
    # _LINEAR_PERMUTE_OUT: one row per modality (weight (M, hidden, 1, 1, 1) or bias (M,))
    order = torch.tensor([PUBLISHED_MODALITIES.index(m) for m in MODALITIES])
    rows = value.reshape(value.shape[0], -1)[order]
    return (rows if value.dim() > 1 else rows.reshape(-1)).contiguous()


def rfnet_state_dict_from_published(obj: Any) -> dict[str, torch.Tensor]:
    """This project's :class:`~lckd_med.networks.rfnet.RFNet` state dict from a published checkpoint.

    Args:
        obj: what ``torch.load`` returns for a published file: the ``{'epoch', 'state_dict', 'optim_dict'}`` wrapper
            or a bare state dict, keys with or without ``module.``. Only ``state_dict`` is read.

    Returns:
        Tensors keyed as in ``RFNet(**rfnet_hparams_from_published(obj)).state_dict()`` (that order; shapes checked
        against that network); load them with ``strict=True``.

    Raises:
        ValueError: not an RFNet checkpoint, an unexpected or missing key, or a shape that does not match (one line
            naming the key).
    """
    state = _published_state(obj)
    num_classes = _num_classes(state)
    try:
        hparams = rfnet_hparams_from_published(obj)
    except ValueError as e:  # widths that no RFNet has (e.g. odd channels)
        raise ValueError(f"published RFNet checkpoint: its layer widths fit no RFNet ({e})") from None
    table = published_key_map(num_classes)
    unexpected = [k for k in state if k not in table]
    missing = [k for k in table if k not in state]
    for what, keys in (("unexpected", unexpected), ("missing", missing)):
        if keys:
            more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
            raise ValueError(f"published RFNet checkpoint: {what} key {keys[0]!r}{more}")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in RFNet(**hparams).state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for pub, (ours, kind) in table.items():
        value = state[pub]
        want = expected[ours]
        if kind in (_LINEAR_PERMUTE_IN, _LINEAR_PERMUTE_OUT) and len(want) == 2:
            want = (*want, 1, 1, 1)  # the published 1x1x1 convolution
        if not value.is_floating_point() or tuple(value.shape) != want:
            raise ValueError(
                f"published RFNet checkpoint: key {pub!r} has shape {tuple(value.shape)} ({value.dtype}); "
                f"expected {want} (floating point)"
            )
        out[ours] = _convert(value, kind)
    return {k: out[k] for k in expected}
