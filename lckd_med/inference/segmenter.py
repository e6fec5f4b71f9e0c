"""The one prediction path: sequences in, label map (and region probabilities) out, on the reference grid.

:class:`Segmenter` holds one trained network and everything that must match its training: the intensity
normalisation its checkpoint records (``train_config``, :func:`lckd_med.data.pipelines.recipe_intensity`), the
sliding window, the region threshold and the label convention. ``lckd-med predict``, the inference bundle's runner
(:class:`~lckd_med.inference.BatchInference`) and the evaluation (:class:`~lckd_med.inference.SubsetEvaluator`) all
predict through it, so a case gives the same labels whichever of them segments it.

    >>> seg = Segmenter.from_checkpoint("model.pt")          # or a .safetensors export
    >>> out = seg({"flair": flair_array, "t1ce": t1ce_array}, affine=affine)
    >>> out.labels.shape, out.labels.dtype                   # the reference (t1ce) grid, uint8 BraTS labels
    ((240, 240, 155), dtype('uint8'))

Steps of one call: read and check every sequence (an array with its affine, a nibabel image or a file; anything that
cannot be an MRI of a head is refused, :func:`lckd_med.data.validation.head_mri_problem`) -> put them on one grid
(:func:`~lckd_med.inference.geometry.align_volumes`, in memory) -> the evaluation transform chain
(:func:`~lckd_med.data.pipelines.eval_transforms` with the checkpoint's normalisation) -> sliding-window logits of the
subset present (:class:`~lckd_med.prediction.SubsetPredictor`, region logits whatever the network's output kind)
-> region probabilities -> the decision (threshold, or argmax over the four classes for a softmax network, see
:mod:`lckd_med.networks.outputs`) -> ``Invertd`` back to the reference grid -> ``LabelConvention.regions_to_labels``.

A checkpoint may record its inference defaults under ``inference`` (:data:`INFERENCE_KEYS`, e.g. an imported
published model's window, overlap, window averaging and decision, see :func:`checkpoint_inference`); an argument
left ``None`` takes the checkpoint's value, else this project's default.

The network is built from the checkpoint in one place, :meth:`Segmenter.__init__`, by
:func:`lckd_med.engines.checkpoint.build_network`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Invertd

from lckd_med.constants import MODALITIES, REGIONS, LabelConvention, label_convention, subset_name
from lckd_med.data.pipelines import eval_transforms, recipe_intensity
from lckd_med.data.transforms import CASE_KEY, IMAGE_KEY, MASK_KEY
from lckd_med.data.validation import case_file_problems
from lckd_med.data.volume import read_image
from lckd_med.engines.checkpoint import build_network, load_checkpoint, weights_hash
from lckd_med.inference.geometry import (
    GeometryError,
    align_volumes,
    image_like,
    read_volume,
    reference_modality,
)
from lckd_med.metrics.postprocess import POSTPROCESSINGS, reference_postprocess
from lckd_med.modalities import ModalitySpec, spec_of
from lckd_med.networks.outputs import (
    check_decision,
    default_decision,
    output_kind,
    region_masks,
    region_probabilities,
)
from lckd_med.prediction import BLEND_MODES, WINDOW_AVERAGES, SubsetPredictor, resolve_device, resolve_roi_size
from lckd_med.reports.folder_scores import voxel_spacing
from lckd_med.reports.overlay import save_overlay
from lckd_med.utils.checks import fraction, positive_int

__all__ = [
    "INFERENCE_KEY",
    "INFERENCE_KEYS",
    "checkpoint_inference",
    "MIN_BACKGROUND_FRACTION",
    "MAX_SPACING_RATIO",
    "SPACING_KEY",
    "Segmentation",
    "Segmenter",
    "open_checkpoint",
    "input_warnings",
]

logger = logging.getLogger(__name__)
_PRED_KEY = "pred"

#: Key of a checkpoint's recorded inference defaults (:func:`checkpoint_inference`).
INFERENCE_KEY = "inference"
#: What ``checkpoint["inference"]`` may hold: window ``roi_size`` (list of ints), ``overlap`` in [0, 1), ``average``
#: (:data:`~lckd_med.prediction.WINDOW_AVERAGES`), ``mode`` (:data:`~lckd_med.prediction.BLEND_MODES`) and
#: ``decision`` (:data:`~lckd_med.networks.outputs.DECISIONS`).
INFERENCE_KEYS: tuple[str, ...] = ("roi_size", "overlap", "average", "mode", "decision")
#: Skull-stripped BraTS images are zero outside the brain, about 80 % of their voxels (1 mm, 240x240x155); a
#: sequence with fewer zero voxels than this share is probably not skull-stripped (warned, not refused).
MIN_BACKGROUND_FRACTION: float = 0.3
#: A voxel size (per axis, sorted) more than this factor away from the training data's is warned about.
MAX_SPACING_RATIO: float = 1.5
#: Key of a checkpoint's ``train_config`` holding the training data's voxel size (mm, sorted, median of the cases).
SPACING_KEY = "voxel_spacing_mm"

SequenceInput = np.ndarray | nib.spatialimages.SpatialImage | str | os.PathLike | None


def checkpoint_inference(checkpoint: Mapping[str, Any], source: str = "checkpoint") -> dict[str, Any]:
    """The inference defaults a checkpoint records (``checkpoint["inference"]``, absent = none), checked.

    Raises:
        ValueError: not a mapping, an unknown key or a bad value (naming ``source`` and the key).
    """
    raw = checkpoint.get(INFERENCE_KEY)
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"{source}: {INFERENCE_KEY!r} must be a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(INFERENCE_KEYS))
    if unknown:
        raise ValueError(f"{source}: unknown {INFERENCE_KEY!r} keys {unknown}; known: {list(INFERENCE_KEYS)}")
    out = dict(raw)
    try:
        if "roi_size" in out:
            if not isinstance(out["roi_size"], (list, tuple)):
                raise ValueError(f"roi_size must be a list of positive ints, got {out['roi_size']!r}")
            out["roi_size"] = [positive_int(v, "roi_size") for v in out["roi_size"]]
        if "overlap" in out:
            out["overlap"] = fraction(out["overlap"], "overlap")
        if "average" in out and out["average"] not in WINDOW_AVERAGES:
            raise ValueError(f"average must be one of {WINDOW_AVERAGES}, got {out['average']!r}")
        if "mode" in out and out["mode"] not in BLEND_MODES:
            raise ValueError(f"mode must be one of {BLEND_MODES}, got {out['mode']!r}")
        if "decision" in out:
            check_decision(out["decision"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: recorded {INFERENCE_KEY} defaults: {e}") from None
    return out


@dataclass(frozen=True)
class Segmentation:
    """What :class:`Segmenter` returns for one case.

    Attributes:
        labels: uint8 ``(H, W, D)`` label map on the reference grid (0, 1 NCR, 2 ED, 4 or 3 ET).
        probabilities: float32 ``(3, H, W, D)`` region probabilities (ET, TC, WT) on the same grid, or None when not
            asked for.
        reference_image: the reference sequence's image, whose grid and header (affine, qform/sform codes) the
            outputs take.
        reference: its modality key.
        subset: the sequences used, e.g. ``"flair+t1ce"``.
        convention: the label values of ``labels``.
        notes: what was resampled or re-oriented onto the reference grid.
        warnings: how the inputs differ from what the model was trained on (see :func:`input_warnings`).
        images: modality key -> float32 voxels of each sequence on the reference grid (what the network saw, before
            normalisation).
    """

    labels: np.ndarray
    probabilities: np.ndarray | None
    reference_image: nib.Nifti1Image
    reference: str
    subset: str
    convention: LabelConvention
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    images: Mapping[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def affine(self) -> np.ndarray:
        """``(4, 4)`` voxel -> world (mm) matrix of the reference grid."""
        return np.asarray(self.reference_image.affine)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (mm) of the reference grid, per array axis."""
        return voxel_spacing(self.affine)

    def label_image(self) -> nib.Nifti1Image:
        """The label map as a uint8 NIfTI image with the reference sequence's header."""
        out = nib.Nifti1Image(self.labels.astype(np.uint8), self.reference_image.affine)
        _copy_geometry(self.reference_image, out)
        out.set_data_dtype(np.uint8)
        return out

    def save_png(self, path: str | os.PathLike, title: str | None = None) -> Path:
        """Three orthogonal slices of the reference sequence through the tumour with the labels overlaid
        (:func:`lckd_med.reports.overlay.save_overlay`)."""
        return save_overlay(
            path,
            self.images[self.reference],
            self.labels,
            self.affine,
            sequences=self.subset.split("+"),
            background_name=self.reference,
            convention=self.convention,
            title=title,
        )

    def probability_image(self) -> nib.Nifti1Image:
        """The region probabilities as a 4-D NIfTI image ``(H, W, D, 3)`` (ET, TC, WT) with the reference header,
        stored as uint8 with a scale factor of 1/255 (readers apply it: values 0..1 in steps of 1/255; a threshold at
        0.5 gives the label map's regions).

        Raises:
            ValueError: the segmentation was made without probabilities.
        """
        if self.probabilities is None:
            raise ValueError(
                "this segmentation was made without probabilities; call the Segmenter with probabilities=True"
            )
        quantised = np.rint(np.clip(self.probabilities, 0.0, 1.0) * 255).astype(np.uint8)
        out = nib.Nifti1Image(np.moveaxis(quantised, 0, -1), self.reference_image.affine)
        _copy_geometry(self.reference_image, out)
        out.set_data_dtype(np.uint8)
        out.header.set_slope_inter(1.0 / 255.0, 0.0)
        out.header["descrip"] = b"lckd_med region probabilities ET,TC,WT"
        out.header.set_intent("vector", (), name="ET,TC,WT")
        return out


def _copy_geometry(reference: nib.Nifti1Image, out: nib.Nifti1Image) -> None:
    q, q_code = reference.header.get_qform(coded=True)
    s, s_code = reference.header.get_sform(coded=True)
    out.header.set_qform(q, int(q_code) if q is not None else None)
    out.header.set_sform(s, int(s_code) if s is not None else None)
    out.header.set_xyzt_units(*reference.header.get_xyzt_units())


def open_checkpoint(
    path: str | os.PathLike, flag: str = "--ckpt", modalities: ModalitySpec | Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A checkpoint dictionary from ``model.pt`` (:func:`~lckd_med.engines.checkpoint.load_checkpoint`) or a
    ``.safetensors`` export (:func:`~lckd_med.engines.safetensors_io.read_safetensors`), checked.

    Args:
        path: the file.
        flag: how the user named it (in messages).
        modalities: the modality spec the data has (default BraTS).

    Raises:
        FileNotFoundError / IsADirectoryError / ValueError: one line naming the file, ``flag`` and, for a file of
            another kind, the command that converts it.
    """
    path = Path(path).expanduser()
    if path.name.lower().endswith(".safetensors"):
        from lckd_med.engines.safetensors_io import read_safetensors

        ckpt = read_safetensors(path)
        spec = spec_of(modalities)
        from lckd_med.engines.checkpoint import checkpoint_spec

        checkpoint_spec(ckpt, source=str(path)).check_same(spec, f"checkpoint {path}", f"the data ({spec.name})")
        return ckpt
    return load_checkpoint(path, map_location="cpu", modalities=modalities, flag=flag)


def input_warnings(
    data: Mapping[str, np.ndarray], spacing: Sequence[float], train_spacing: Sequence[float] | None
) -> list[str]:
    """How a case differs from what the model was trained on, as warnings (the case is still segmented).

    * a sequence with fewer than :data:`MIN_BACKGROUND_FRACTION` zero voxels (not skull-stripped: BraTS images are
      zero outside the brain);
    * voxels (sorted sizes, mm) more than :data:`MAX_SPACING_RATIO` times larger or smaller than the training data's
      (``train_spacing``, recorded in new checkpoints' ``train_config``; no check when None).
    """
    out = []
    for m, d in data.items():
        share = float(np.count_nonzero(d == 0)) / max(d.size, 1)
        if share < MIN_BACKGROUND_FRACTION:
            out.append(
                f"the {m} image has a non-zero background (only {share:.0%} of its voxels are 0; skull-stripped "
                "BraTS images are 0 outside the brain, about 80 % of the voxels): the model was trained on "
                "skull-stripped, co-registered images, so strip the skull first (e.g. HD-BET or SynthStrip)"
            )
    if train_spacing:
        mine, theirs = sorted(float(v) for v in spacing), sorted(float(v) for v in train_spacing)
        ratios = [a / b for a, b in zip(mine, theirs, strict=False) if b > 0]
        if any(r > MAX_SPACING_RATIO or r < 1 / MAX_SPACING_RATIO for r in ratios):
            out.append(
                f"voxel size {' x '.join(f'{v:.3g}' for v in spacing)} mm is far from the training data's "
                f"({' x '.join(f'{v:.3g}' for v in train_spacing)} mm): expect lower accuracy; resample the images "
                "to the training voxel size, or choose another --grid"
            )
    return out


def _size(shape: Sequence[int], spacing: Sequence[float]) -> str:
    return f"{' x '.join(str(int(s)) for s in shape)} voxels of {' x '.join(f'{v:.3g}' for v in spacing)} mm"


class Segmenter:
    """One trained network, ready to segment cases with whatever sequences they have (see the module docstring).

    Args:
        checkpoint: a checkpoint dictionary (:func:`open_checkpoint`); :meth:`from_checkpoint` reads one from a file.
        source: how messages name the checkpoint.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        amp: bf16 autocast on CUDA.
        roi_size: sliding-window size; None takes the checkpoint's (``inference.roi_size``, else the training crop
            ``train_config.roi_size``).
        overlap: sliding-window overlap in [0, 1); None takes the checkpoint's (``inference.overlap``), else 1/3.
        threshold: region probability above which a voxel belongs to the region, in (0, 1) (the ``"threshold"``
            decision).
        decision: ``"threshold"`` or ``"argmax"`` (:data:`~lckd_med.networks.outputs.DECISIONS`); None takes the checkpoint's
            (``inference.decision``), else the network's output kind's
            (:func:`~lckd_med.networks.outputs.default_decision`: threshold for region sigmoids, argmax for a softmax
            over the classes).
        label_convention: labels to write (``"brats2018"`` ET=4, ``"brats2023"`` ET=3, or a year); None takes the
            checkpoint's.
        sw_batch_size: windows per network call.
        mode: window blending (:data:`~lckd_med.prediction.BLEND_MODES`); None takes the checkpoint's, else
            ``"constant"``.
        average: what overlapping windows average, ``"logits"`` or ``"probabilities"`` (the LCKD reference's);
            None takes the checkpoint's, else ``"logits"``.
        postprocess: ``"none"`` or ``"reference"`` (:func:`lckd_med.metrics.postprocess.reference_postprocess`,
            k-means step only when T1ce is present).
        grid: default output grid of :meth:`__call__` (None: t1ce, else flair, t2, t1; a sequence name;
            ``"coarsest"`` / ``"finest"``; see :func:`lckd_med.inference.geometry.choose_reference`).
        modalities: the :class:`~lckd_med.modalities.ModalitySpec` of the data (None = BraTS); :meth:`__call__` is
            for 3-D BraTS volumes, :meth:`predict_sample` for any spec.

    Raises:
        ValueError / TypeError: an invalid argument (one per argument, naming it).
    """

    def __init__(
        self,
        checkpoint: Mapping[str, Any],
        *,
        source: str = "checkpoint",
        device: str | torch.device = "auto",
        amp: bool = True,
        roi_size: int | Sequence[int] | None = None,
        overlap: float | None = None,
        threshold: float = 0.5,
        label_convention: int | str | LabelConvention | None = None,
        sw_batch_size: int = 1,
        mode: str | None = None,
        average: str | None = None,
        postprocess: str = "none",
        decision: str | None = None,
        grid: str | None = None,
        modalities: ModalitySpec | Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(amp, bool):
            raise TypeError(f"amp must be a bool, got {amp!r}")
        recorded = checkpoint_inference(checkpoint, source)
        overlap = recorded.get("overlap", 1 / 3) if overlap is None else overlap
        mode = recorded.get("mode", "constant") if mode is None else mode
        average = recorded.get("average", "logits") if average is None else average
        roi_size = recorded.get("roi_size") if roi_size is None else roi_size
        fraction(overlap, "overlap")
        fraction(threshold, "threshold", low_open=True)
        positive_int(sw_batch_size, "sw_batch_size")
        if postprocess not in POSTPROCESSINGS:
            raise ValueError(f"postprocess must be one of {POSTPROCESSINGS}, got {postprocess!r}")
        if mode not in BLEND_MODES:
            raise ValueError(f"mode (window blending) must be one of {BLEND_MODES}, got {mode!r}")
        if average not in WINDOW_AVERAGES:
            raise ValueError(f"average must be one of {WINDOW_AVERAGES}, got {average!r}")
        if decision is not None:
            check_decision(decision)
        self.spec = spec_of(modalities)
        self.source = source
        self.device = resolve_device(device)
        self.amp = amp
        self.overlap = float(overlap)
        self.threshold = float(threshold)
        self.postprocess = postprocess
        self.average = average
        self.grid = grid
        self.weights_sha256 = checkpoint.get("weights_sha256") or weights_hash(checkpoint["model"])
        # the description without the weights (they live in the network) and without training state
        self.checkpoint = {
            k: v for k, v in checkpoint.items() if k not in ("model", "optimizer", "scheduler", "rng", "grad_params")
        }
        self.convention = label_convention_of(checkpoint, label_convention)
        self.network = build_network(checkpoint).eval().to(self.device)
        #: what the network outputs (:mod:`lckd_med.networks.outputs`); the sweep turns it into region logits
        self.output_kind = output_kind(self.network)
        #: how region probabilities become region masks (``"threshold"`` or ``"argmax"``)
        self.decision: str = decision or recorded.get("decision") or default_decision(self.output_kind)
        self.mode = mode
        self.predictor = SubsetPredictor(
            self.network,
            resolve_roi_size(roi_size, checkpoint, self.network, where=source),
            overlap=self.overlap,
            mode=mode,
            amp=self.amp,
            sw_batch_size=sw_batch_size,
            device=self.device,
            output_device="cpu",
            modalities=self.spec,
            average=average,
        )
        self.roi_size = self.predictor.roi_size
        train_config = checkpoint.get("train_config") or {}
        self.intensity = recipe_intensity(train_config)
        spacing = train_config.get(SPACING_KEY)
        self.train_spacing: tuple[float, ...] | None = tuple(float(v) for v in spacing) if spacing else None
        self.transforms = eval_transforms(
            self.convention, with_label=False, modalities=self.spec, intensity=self.intensity
        )
        self.inverter = Invertd(
            keys=_PRED_KEY, transform=self.transforms, orig_keys=IMAGE_KEY, nearest_interp=True, to_tensor=True
        )

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, flag: str = "--ckpt", **options: Any) -> Segmenter:
        """A segmenter from ``model.pt`` or a ``.safetensors`` export (:func:`open_checkpoint`); ``options`` as
        :class:`Segmenter` takes them (``device``, ``roi_size``, ``grid``, ...)."""
        ckpt = open_checkpoint(path, flag=flag, modalities=options.get("modalities"))
        return cls(ckpt, source=str(path), **options)

    # ------------------------------------------------------------------------------------------------ one case
    def read(
        self,
        sequences: Mapping[str, SequenceInput],
        affine: np.ndarray | Mapping[str, np.ndarray] | None = None,
    ) -> tuple[dict[str, tuple[nib.Nifti1Image, np.ndarray]], dict[str, str]]:
        """Read and check the present sequences: ``({key: (image, float32 voxels)}, {key: name in messages})``.

        Args:
            sequences: modality key -> a 3-D array (with ``affine``), a nibabel image or a NIfTI file; None (or a
                missing key) is a missing sequence.
            affine: ``(4, 4)`` voxel -> world (mm) matrix of the arrays (one for all, or a mapping per key).

        Raises:
            GeometryError: an unknown key, no sequence, an array without affine, or a sequence that is unreadable
                or cannot be an MRI of a head; one scan given as two sequences, or two patients' files.
        """
        unknown = [k for k in sequences if k not in MODALITIES]
        if unknown:
            raise GeometryError(f"unknown sequence keys {unknown}; expected keys from {MODALITIES}")
        present = {m: sequences[m] for m in MODALITIES if m in sequences and not _missing(sequences[m])}
        reference_modality(list(present))  # raises for no sequence
        paths = {m: v for m, v in present.items() if isinstance(v, (str, os.PathLike))}
        problems = case_file_problems(paths) if len(paths) > 1 else []
        if problems:  # one scan given twice, or two patients' files: a segmentation would be silently wrong
            raise GeometryError("; ".join(why for _, why in problems))
        volumes: dict[str, tuple[nib.Nifti1Image, np.ndarray]] = {}
        names: dict[str, str] = {}
        for m, value in present.items():
            if isinstance(value, (str, os.PathLike)):
                img, data = read_volume(value, m)
                names[m] = str(value)
            else:
                names[m] = f"{m} {'array' if isinstance(value, np.ndarray) else 'image'}"
                img, data = _in_memory(value, m, affine, names[m])
            volumes[m] = (img, data)
        keys = list(present)
        for i, a in enumerate(keys):  # files were compared above, by path and content hash
            for b in keys[i + 1 :]:
                if a in paths and b in paths:
                    continue
                da, db = volumes[a][1], volumes[b][1]
                if da.shape == db.shape and np.array_equal(da, db):
                    raise GeometryError(
                        f"the {b} sequence has the same voxels as the {a} sequence (one scan given as two sequences); "
                        "give each sequence its own scan"
                    )
        return volumes, names

    @torch.no_grad()
    def __call__(
        self,
        sequences: Mapping[str, SequenceInput],
        affine: np.ndarray | Mapping[str, np.ndarray] | None = None,
        *,
        grid: str | None = None,
        probabilities: bool = False,
        name: str = "case",
        progress: bool = False,
    ) -> Segmentation:
        """Segment one case.

        Args:
            sequences: modality key (``flair``, ``t1``, ``t1ce``, ``t2``) -> a 3-D numpy array (give ``affine``), a
                nibabel image or a NIfTI file; any non-empty subset (the others count as missing).
            affine: ``(4, 4)`` voxel -> world (mm) matrix of the arrays: one for all, or a mapping per key.
            grid: the output grid for this call (default: the segmenter's ``grid``).
            probabilities: also return the region probabilities (``Segmentation.probabilities``).
            name: names the case in log lines and in the progress bar.
            progress: draw a bar over the windows (on a terminal only).

        Returns:
            A :class:`Segmentation` on the reference grid.

        Raises:
            GeometryError / ValueError: a bad input (see :meth:`read`), sequences too far apart, an unknown ``grid``.
        """
        if self.spec.spatial_dims != 3 or self.spec.names != MODALITIES:
            raise ValueError("Segmenter(...)(sequences) segments 3-D BraTS cases; use predict_sample for other specs")
        volumes, names = self.read(sequences, affine)
        alignment = align_volumes(volumes, names, self.grid if grid is None else grid)
        ref_img = alignment.images[alignment.reference]
        ref_shape = tuple(int(s) for s in alignment.data[alignment.reference].shape)
        subset = subset_name(tuple(alignment.images))
        spacing = voxel_spacing(ref_img.affine)
        warnings = input_warnings(alignment.data, spacing, self.train_spacing)
        # images over the voxels already read (files are not read twice); same affine and header geometry
        held = {m: image_like(alignment.data[m], alignment.images[m]) for m in alignment.images}
        sample = self.transforms({CASE_KEY: name, **{m: held.get(m) for m in MODALITIES}})
        logger.info(
            "%s: %s on the %s grid, output %s; %d window(s) of %s voxels",
            name,
            subset,
            alignment.reference,
            _size(ref_shape, spacing),
            self.predictor.count_windows(tuple(sample[IMAGE_KEY].shape[1:])),
            "x".join(str(r) for r in self.roi_size),
        )
        labels, probs = self.predict_sample(
            sample,
            [subset],
            available=sample[MASK_KEY][None],
            probabilities=probabilities,
            progress=name if progress else None,
            sources=names,
        )
        labels, probs = labels[0], (probs[0] if probs is not None else None)
        if labels.shape != ref_shape:
            raise RuntimeError(f"prediction inverted to shape {labels.shape} but the reference grid is {ref_shape}")
        if self.postprocess == "reference":
            t1ce = alignment.data.get("t1ce")
            labels = reference_postprocess(labels, t1ce, self.convention, spacing).astype(np.uint8)
        return Segmentation(
            labels=labels,
            probabilities=probs,
            reference_image=ref_img,
            reference=alignment.reference,
            subset=subset,
            convention=self.convention,
            notes=alignment.notes,
            warnings=tuple(warnings),
            images=alignment.data,
        )

    # ------------------------------------------------------------------------------------------------ building blocks
    @torch.no_grad()
    def predict_sample(
        self,
        sample: dict[str, Any],
        subsets: Sequence[str],
        available: torch.Tensor | None = None,
        probabilities: bool = False,
        progress: str | None = None,
        sources: Mapping[str, str] | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Label maps (and region probabilities) of one preprocessed sample under ``subsets``, on its input grid.

        Args:
            sample: the output of :attr:`transforms` for one case (``image`` a MetaTensor ``(C, *S)`` whose applied
                operations ``Invertd`` undoes).
            subsets: subset names to decode (each needs its sequences present).
            available: ``(1, M)`` sequences present (a subset needing another raises ``ValueError``).
            probabilities: also return the region probabilities.
            progress: label of a bar over the windows (None: no bar).
            sources: modality key -> file, to name in the non-finite error.

        Returns:
            ``(labels, probs)``: uint8 ``(K, *S_in)`` label maps of the segmenter's convention, and float32
            ``(K, 3, *S_in)`` probabilities (ET, TC, WT) or None. Labels follow :attr:`decision` (threshold, or argmax
            over the classes recovered from the regions).

        Raises:
            ValueError: non-finite values after normalisation (intensities too large for the float32 z-score).
        """
        image = sample[IMAGE_KEY]
        mask = sample.get(MASK_KEY)
        if mask is not None:
            bad = [m for i, m in enumerate(self.spec.names) if bool(mask[i]) and not torch.isfinite(image[i]).all()]
            if bad:  # huge finite intensities overflow the z-score: an all-zero "ok" segmentation would be silent
                files = ", ".join(str((sources or {}).get(m, m)) for m in bad)
                raise ValueError(
                    f"non-finite values after intensity normalisation of {files}: intensities too large for the "
                    "float32 z-score; rescale these images"
                )
        logits = self.predictor(torch.as_tensor(image).unsqueeze(0), subsets, available=available, progress=progress)
        # the sweep returns region logits whatever the network's output kind
        regions = region_probabilities(logits[0], "regions", dim=1)  # (K, 3, *S)
        k, r = regions.shape[:2]
        if probabilities:
            sample[_PRED_KEY] = MetaTensor(regions.reshape(k * r, *regions.shape[2:]))
            inverted = torch.as_tensor(self.inverter(sample)[_PRED_KEY]).cpu().numpy().astype(np.float32)
            probs = inverted.reshape(k, r, *inverted.shape[1:])
            above = region_masks(torch.from_numpy(probs), self.decision, self.threshold, dim=1).numpy()
        else:
            # Invertd only inverts a MetaTensor (a plain tensor is skipped with a warning)
            masks = region_masks(regions, self.decision, self.threshold, dim=1)
            sample[_PRED_KEY] = MetaTensor(masks.to(torch.uint8).reshape(k * r, *regions.shape[2:]))
            inverted = torch.as_tensor(self.inverter(sample)[_PRED_KEY]).cpu().numpy() > 0.5
            above, probs = inverted.reshape(k, r, *inverted.shape[1:]), None
        index = {name: REGIONS.index(name) for name in ("ET", "TC", "WT")}
        labels = np.stack(
            [self.convention.regions_to_labels(a[index["ET"]], a[index["TC"]], a[index["WT"]]) for a in above]
        ).astype(np.uint8)
        return labels, probs


def label_convention_of(
    checkpoint: Mapping[str, Any], requested: int | str | LabelConvention | None = None
) -> LabelConvention:
    """The label convention to write: ``requested``, else the checkpoint's."""
    return label_convention(checkpoint["label_convention"] if requested is None else requested)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _in_memory(
    value: Any, modality: str, affine: np.ndarray | Mapping[str, np.ndarray] | None, name: str
) -> tuple[nib.Nifti1Image, np.ndarray]:
    """An array (with its affine) or a nibabel image, checked as a file would be (:func:`read_image`)."""
    if isinstance(value, nib.spatialimages.SpatialImage):
        image = value
    elif isinstance(value, (np.ndarray, torch.Tensor)):
        aff = affine.get(modality) if isinstance(affine, Mapping) else affine
        if aff is None:
            raise GeometryError(
                f"{name}: give affine= (the 4x4 voxel-to-world matrix in mm, e.g. nibabel's image.affine) with "
                "numpy arrays: it places the voxels in space and sets the voxel size"
            )
        aff = np.asarray(aff, dtype=float)
        if aff.shape != (4, 4):
            raise GeometryError(f"{name}: affine must be a 4x4 matrix, got shape {aff.shape}")
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        image = nib.Nifti1Image(np.asarray(array), aff)
        image.header.set_qform(aff, 1)
        image.header.set_sform(aff, 1)
    else:
        raise GeometryError(
            f"{name}: expected a numpy array, a nibabel image or a file path, got {type(value).__name__}"
        )
    read = read_image(image, name)
    if read.problems:
        raise GeometryError(f"{name}: {read.problems[0]}")
    data = np.asarray(read.data, dtype=np.float32)
    if not isinstance(image, nib.Nifti1Image) or data.shape != tuple(image.shape):
        image = image_like(data, nib.Nifti1Image(data, np.asarray(image.affine)))
    return image, data
