"""Released RFNet and mmFormer checkpoints -> this project's checkpoint (``lckd-med import-checkpoint``).

The authors of RFNet (dyh127/RFNet) and mmFormer (YaoZhang93/mmFormer) saved ``{'epoch', 'state_dict',
'optim_dict'}`` of a ``torch.nn.DataParallel`` model (``module.`` key prefixes). :func:`import_published_checkpoint`
reads such a file with ``torch.load(weights_only=True)`` (no pickled code runs), converts the weights with the
network importers (:func:`~lckd_med.networks.rfnet_import.rfnet_state_dict_from_published`,
:func:`~lckd_med.networks.mmformer_import.mmformer_state_dict_from_published`), loads them strictly into the
rebuilt network and writes a checkpoint (:func:`~lckd_med.engines.checkpoint.save_checkpoint`) that records what
the published training assumed, so that inference applies it:

``network``        ``RFNet`` / ``MMFormerNet`` and their hyper-parameters (read from the tensor shapes)
``modalities``     this project's order (flair, t1, t1ce, t2; the importers permuted the published flair, t1ce, t1,
                   t2)
``train_config``   ``intensity: "published"`` (:mod:`lckd_med.data.intensity`: LPS voxel order, brain box widened to
                   128, z-score over the brain mask applied to every voxel) and the training crop ``roi_size``
``inference``      the published predict: window (RFNet 80^3, mmFormer 128^3 fixed by its position embeddings),
                   overlap 0.5, uniform averaging of the class probabilities, argmax (see :data:`PUBLISHED_MODELS`)
``published``      provenance: source repository and commit, the file, its epoch, the published channel order, the
                   classes and their BraTS labels (0, 1, 2, 4), and the published recipe facts
``imported_from``  the file (training never resumes from an imported checkpoint)

The network's output kind is ``"classes"`` (:mod:`lckd_med.networks.outputs`): a softmax over background, NCR/NET,
ED and ET (label 4 learnt as class 3); :class:`~lckd_med.inference.Segmenter` turns it into regions and decides by
argmax, so ``lckd-med predict``, batch inference and evaluation take the written file unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from lckd_med import __version__
from lckd_med.constants import MODALITIES, REGIONS
from lckd_med.engines.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from lckd_med.networks.mmformer import PUBLISHED_MODALITY_ORDER, MMFormerNet
from lckd_med.networks.mmformer_import import mmformer_hparams_from_published, mmformer_state_dict_from_published
from lckd_med.networks.outputs import CLASS_LABELS, CLASS_NAMES
from lckd_med.networks.rfnet import PUBLISHED_RECIPE as RFNET_RECIPE
from lckd_med.networks.rfnet import RFNet, recipe_to_json
from lckd_med.networks.rfnet_import import rfnet_hparams_from_published, rfnet_state_dict_from_published
from lckd_med.utils.outputs import check_output_file

__all__ = [
    "PUBLISHED_MODELS",
    "PUBLISHED_OVERLAP",
    "MMFORMER_RECIPE",
    "PublishedModel",
    "published_checkpoint",
    "read_published",
    "import_published_checkpoint",
]

#: What the published mmFormer training and inference assume (YaoZhang93/mmFormer at b18663a; file:line there).
MMFORMER_RECIPE: Mapping[str, Any] = MappingProxyType(
    {
        "source": {
            "repository": "https://github.com/YaoZhang93/mmFormer",
            "commit": "b18663adbfd0323656083e0470420c8c715c1782",
        },
        "modalities": list(PUBLISHED_MODALITY_ORDER),  # mmformer/preprocess.py:72
        "classes": list(CLASS_NAMES),  # label 4 stored as class 3 (mmformer/preprocess.py:80-81)
        "class_labels": list(CLASS_LABELS),
        "output": "softmax probabilities (mmformer/mmformer.py:174); label map = argmax over classes (predict.py:191)",
        "preprocessing": {
            "crop": (
                "bounding box of the voxels where the maximum over the four sequences is non-zero, each axis widened "
                "symmetrically to at least 128 voxels, the box end used as an exclusive slice end "
                "(mmformer/preprocess.py:15-42,73-74)"
            ),
            "normalisation": (
                "per sequence z-score with mean and std (numpy, ddof 0) over the brain mask (sum of the four sequences "
                "> 0, on the crop), applied to every voxel of the crop (mmformer/preprocess.py:44-52,74)"
            ),
            "resampling": "none (BraTS is 1 mm isotropic)",
        },
        "inference": {
            "window": [128, 128, 128],  # mmformer/predict.py:16; the position embeddings fix it (mmformer.py)
            "stride": [64, 64, 64],  # overlap 0.5: starts 0, 64, ... and n - 128 last (mmformer/predict.py:156-169)
            "aggregation": "mean of the windows' softmax probabilities (uniform weights) (mmformer/predict.py:172-188)",
            "num_heads": 8,  # mmformer/mmformer.py:11, not recorded in the weights
        },
        "training": {"crop": [128, 128, 128]},  # RandCrop3D (mmformer/train.py:45)
    }
)


@dataclass(frozen=True)
class PublishedModel:
    """One published method whose released checkpoints :func:`published_checkpoint` converts.

    Attributes:
        name: the ``--from`` value (``"rfnet"``, ``"mmformer"``).
        title: how messages name it.
        network: the network class the weights load into.
        hparams: published-layout object -> the network's hyper-parameters (read from the shapes).
        convert: (published-layout object, hparams) -> this project's state dict.
        window: the published predict's window (the default ``roi_size``); ``crop`` its training crop.
        window_hparam: the hyper-parameter that fixes the window instead (mmFormer's ``img_size``), or None.
        recipe: the published recipe facts recorded in the checkpoint.
    """

    name: str
    title: str
    network: type[torch.nn.Module]
    hparams: Callable[[Any], dict[str, Any]]
    convert: Callable[[Any, Mapping[str, Any]], dict[str, torch.Tensor]]
    window: tuple[int, int, int]
    crop: tuple[int, int, int]
    recipe: Mapping[str, Any]
    window_hparam: str | None = None


#: The published models, by ``--from`` name.
PUBLISHED_MODELS: Mapping[str, PublishedModel] = MappingProxyType(
    {
        "rfnet": PublishedModel(
            name="rfnet",
            title="RFNet",
            network=RFNet,
            hparams=rfnet_hparams_from_published,
            convert=lambda obj, hparams: rfnet_state_dict_from_published(obj),
            window=(80, 80, 80),  # predict.py:131,155-168
            crop=(80, 80, 80),  # train.py:45
            recipe=recipe_to_json(RFNET_RECIPE),
        ),
        "mmformer": PublishedModel(
            name="mmformer",
            title="mmFormer",
            network=MMFormerNet,
            hparams=mmformer_hparams_from_published,
            convert=mmformer_state_dict_from_published,
            window=(128, 128, 128),
            crop=(128, 128, 128),
            recipe=MMFORMER_RECIPE,
            window_hparam="img_size",
        ),
    }
)
#: The published predict's window overlap (``predict.py:155-168`` of both: stride = window / 2).
PUBLISHED_OVERLAP = 0.5


def _model(source: str) -> PublishedModel:
    if source not in PUBLISHED_MODELS:
        raise ValueError(f"--from must be one of {list(PUBLISHED_MODELS)}, got {source!r}")
    return PUBLISHED_MODELS[source]


def read_published(path: str | os.PathLike, source: str) -> Any:
    """What ``torch.load(weights_only=True)`` returns for a published file, on the CPU.

    Raises:
        FileNotFoundError / IsADirectoryError: no file at ``path``.
        ValueError: not a torch file, a file holding pickled objects, or an lckd_med checkpoint already (one line).
    """
    model = _model(source)
    path = Path(path).expanduser()
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give the published {model.title} checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"no file at {path}; give the published {model.title} checkpoint (.pth) file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, not a torch file, or pickled objects: all refused
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        if "Weights only load failed" in why:
            why = "it holds pickled Python objects, which are refused for safety"
        raise ValueError(f"{path}: not a readable published {model.title} checkpoint ({why})") from None
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is already an lckd_med checkpoint (format {CHECKPOINT_FORMAT!r}); give it to "
            "`lckd-med predict --ckpt` as it is"
        )
    return obj


def published_checkpoint(obj: Any, source: str, file: str | os.PathLike | None = None) -> dict[str, Any]:
    """The checkpoint payload (for :func:`~lckd_med.engines.checkpoint.save_checkpoint`) of a published model.

    Args:
        obj: what ``torch.load`` returns for the published file (the ``{'epoch', 'state_dict', 'optim_dict'}``
            wrapper or a bare state dict, keys with or without ``module.``).
        source: ``"rfnet"`` or ``"mmformer"`` (:data:`PUBLISHED_MODELS`).
        file: the file it came from (recorded as ``imported_from`` and in ``published``).

    Raises:
        ValueError: ``obj`` is not a published checkpoint of ``source`` (one line naming the key), or its classes
            are not the four BraTS 2018-2021 classes.
    """
    model = _model(source)
    hparams = model.hparams(obj)
    if hparams.get("out_channels") != len(CLASS_LABELS):
        raise ValueError(
            f"this {model.title} checkpoint has {hparams.get('out_channels')} classes; only the four BraTS 2018-2021 "
            f"classes ({', '.join(CLASS_NAMES)}) are supported (the 5-class BraTS 2015 models are not)"
        )
    state = model.convert(obj, hparams)
    network = model.network.from_hparams(hparams)
    network.load_state_dict(state, strict=True)
    epoch = obj.get("epoch") if isinstance(obj, Mapping) else None
    # mmFormer's position embeddings fix the window (128^3 for the released weights)
    window = list(hparams[model.window_hparam]) if model.window_hparam else list(model.window)
    crop = window if model.window_hparam else list(model.crop)
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "network": {"name": model.network.__name__, "hparams": hparams},
        "model": {k: v.detach().clone().contiguous() for k, v in network.state_dict().items()},
        "modalities": list(MODALITIES),
        "regions": list(REGIONS),
        "method": model.name,  # the registered training method of the same name
        "label_convention": "brats2018",
        "train_config": {"intensity": "published", "roi_size": crop},
        "inference": {
            "roi_size": window,
            "overlap": PUBLISHED_OVERLAP,
            "average": "probabilities",
            "mode": "constant",
            "decision": "argmax",
        },
        "published": {
            "source": model.name,
            "repository": model.recipe["source"]["repository"],
            "commit": model.recipe["source"]["commit"],
            "file": None if file is None else Path(file).name,
            "epoch": int(epoch) if isinstance(epoch, int) and not isinstance(epoch, bool) else None,
            "modalities": list(model.recipe["modalities"]),
            "classes": list(CLASS_NAMES),
            "class_labels": list(CLASS_LABELS),
            "converted_by": f"lckd_med {__version__}",
            "recipe": recipe_to_json(model.recipe),
        },
    }
    if file is not None:
        payload["imported_from"] = str(Path(file).expanduser().resolve())
    return payload


def import_published_checkpoint(
    source: str, path: str | os.PathLike, output: str | os.PathLike, overwrite: bool = False
) -> Path:
    """Convert the published ``source`` checkpoint at ``path`` and write it to ``output`` (atomically).

    Args:
        source: ``"rfnet"`` or ``"mmformer"``.
        path: the released file.
        output: the checkpoint to write (``.pt``); an existing file is replaced only with ``overwrite`` (never
            ``path``).

    Raises:
        FileNotFoundError / IsADirectoryError / ValueError / FileExistsError: one line each (see
            :func:`read_published`, :func:`published_checkpoint`,
            :func:`~lckd_med.utils.outputs.check_output_file`).
    """
    model = _model(source)
    out = Path(output).expanduser()
    if out.suffix != ".pt":
        raise ValueError(f"--output must end in .pt (an lckd_med checkpoint, e.g. model.pt), got {out}")
    check_output_file(out, inputs=[path], overwrite=overwrite, what="--output")
    obj = read_published(path, model.name)
    return save_checkpoint(out, published_checkpoint(obj, model.name, file=path))
