"""A one-input view of a trained network for TorchScript export (``python -m monai.bundle ckpt_export``).

MONAI's ``ckpt_export`` converts the config's ``network_def`` with ``torch.jit.script`` or, with ``--use_trace``,
``torch.jit.trace`` on one random input ``(1, 4, H, W, D)``. lckd_med's networks take a second argument, the
availability mask, and branch in Python on which sequences are present (encoders are skipped for missing ones),
so neither conversion can keep their behaviour as-is. :class:`ExportableSegmenter` wraps a network so that:

* the only input is the image ``(B, 4, H, W, D)`` in ``MODALITIES`` order, and a sequence is *missing* exactly
  when its channel is all zeros (the toolkit's convention for missing inputs, which ``NormalizeIntensityd``
  keeps at 0);
* every channel is encoded (no branching: a missing channel's features are replaced by the decoder anyway, so
  the result equals the network's own ``forward(x, mask)``, pinned by a test), and the mask enters the graph as
  a tensor computed from ``x``, so one traced graph serves all 15 subsets;
* ``load_state_dict`` / ``state_dict`` are the wrapped network's, so ``ckpt_export --key_in_ckpt model`` loads
  ``model.pt``'s weights into it directly.

Output: ``(B, 3, H, W, D)`` logits in ``REGIONS`` order (ET, TC, WT); sigmoid > 0.5 gives the regions. The
spatial size must be a multiple of the network's ``size_divisor`` (16 for the default 5-level network).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from lckd_med.engines.checkpoint import build_network, load_checkpoint
from lckd_med.engines.settings import export_target
from lckd_med.networks.outputs import output_kind, region_logits
from lckd_med.utils.outputs import check_output_file
from lckd_med.utils.parse import parse_bool

__all__ = ["ExportableSegmenter"]


class ExportableSegmenter(torch.nn.Module):
    """Image-only, traceable wrapper of an lckd_med network (see the module docstring).

    Args:
        network: an :class:`~lckd_med.networks.LCKDNet` or :class:`~lckd_med.networks.OMDNet` (anything with
            ``encode(x)`` and ``decode(features, mask)``).

    Raises:
        TypeError: ``network`` lacks ``encode``/``decode``.
    """

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        if not (callable(getattr(network, "encode", None)) and callable(getattr(network, "decode", None))):
            raise TypeError(f"network must have encode(x) and decode(features, mask), got {type(network).__name__}")
        self.network = network

    @classmethod
    def from_checkpoint(
        cls, ckpt_path: str | os.PathLike, load_weights: bool = True, overwrite: bool = False
    ) -> ExportableSegmenter:
        """The network described in an lckd_med checkpoint (rebuilt from its stored hyper-parameters), in eval mode.

        Under ``python -m monai.bundle ckpt_export`` the network is rebuilt from the file the command exports
        (``--ckpt_file``) rather than from ``ckpt_path`` (the config's ``<ckpt_dir>/model.pt``), so the documented
        command works for any checkpoint without ``--ckpt_dir``; and the file it will write (``--filepath``) is
        checked first: an existing file is refused unless ``overwrite`` (the bundle key, ``--overwrite True``), and the
        checkpoint itself always.

        Raises:
            FileNotFoundError / ValueError: see :func:`lckd_med.engines.checkpoint.load_checkpoint`.
            FileExistsError: the export target exists and ``overwrite`` is False.
        """
        from lckd_med.engines.workflow import install_error_hook

        install_error_hook()  # ckpt_export runs no initialize list: a bad file is one line here too
        overwrite = parse_bool(overwrite, "--overwrite")  # ckpt_export runs no initialize: "false" arrives as text
        target = export_target()
        if target is not None:
            filepath, ckpt_file = target
            if ckpt_file:
                ckpt_path = ckpt_file
            check_output_file(
                filepath,
                inputs=[ckpt_path, ckpt_file or None],
                overwrite=overwrite,
                flag="--overwrite True",
                what="--filepath",
            )
        ckpt = load_checkpoint(ckpt_path, map_location="cpu")
        return cls(build_network(ckpt, load_weights=load_weights)).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Region logits ``(B, 3, H, W, D)`` (ET, TC, WT) of ``x`` ``(B, 4, H, W, D)``; all-zero channels are missing.
        A softmax network's class logits (output kind ``"classes"``, RFNet, mmFormer) become the logits of its region
        probabilities (:func:`~lckd_med.networks.outputs.region_logits`), so the output means the same for every
        network."""
        mask = x.flatten(2).abs().amax(dim=2) > 0  # (B, M): a channel with any non-zero voxel is present
        kind = output_kind(self.network)
        if not torch.jit.is_tracing():
            return region_logits(self._decode(self.network.encode(x), mask), kind, dim=1)
        # the networks' argument checks read tensors as Python bools; they pass on the trace input and drop out of
        # the graph, which is right here because the mask itself flows through the graph as a tensor
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            return region_logits(self._decode(self.network.encode(x), mask), kind, dim=1)

    def _decode(self, features: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """Decode an encoding of every channel without branching on which sequences are present.

        Under ``fill_levels="bottleneck"`` the network's own ``decode`` takes a shortcut when every sequence is
        present and otherwise swaps in cached zero-input encodings, both decided in Python: a trace made on a
        full input would record mean-fill at every level. Here every channel was encoded from ``x``, so a missing
        channel's skip features already are its zero-input encoding (normalisation is per sample): the skips are
        fused as they are and only the bottleneck is mean-filled, all as tensor operations.
        """
        net = self.network
        fusions = getattr(net, "fusions", None)
        if getattr(fusions, "fill_levels", None) != "bottleneck":
            return net.decode(features, mask)
        levels = list(fusions)
        fused = [fusion.fuse(f.flatten(1, 2)) for fusion, f in zip(levels[:-1], features[:-1], strict=True)]
        fused.append(levels[-1](features[-1], mask, validate=False))
        return net.decoder(fused, False)

    # the checkpoint stores the bare network's weights: read and write them without the wrapper's prefix
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return self.network.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        try:
            return self.network.load_state_dict(state_dict, strict=strict, assign=assign)
        except RuntimeError as e:
            raise RuntimeError(
                f"the weights do not fit the {type(self.network).__name__} this wrapper was built with: in "
                "`ckpt_export`, --ckpt_file and the config's ckpt_path (--ckpt_dir) must name the same checkpoint "
                f"({e})"
            ) from e
