"""The one device resolver of training, election, evaluation, batch inference and the benchmarks."""

from __future__ import annotations

import os

import torch

__all__ = ["resolve_device"]


def resolve_device(requested: str | torch.device = "auto") -> torch.device:
    """The torch device to run on.

    Args:
        requested: ``"auto"`` (CUDA when available, on the local rank under ``torchrun``, else CPU), ``"cpu"``,
            ``"cuda"`` or ``"cuda:N"`` (or a ``torch.device``).

    Raises:
        ValueError: the name is not a device, or CUDA is asked for where there is none.
    """
    if isinstance(requested, str) and requested == "auto":
        if torch.cuda.is_available():
            # under torchrun every rank must use its own GPU: LOCAL_RANK says which
            return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
        return torch.device("cpu")
    try:
        dev = torch.device(requested)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {requested!r}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} requested but CUDA is not available; use device='auto' or 'cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(
            f"device {requested!r} requested but this machine has {torch.cuda.device_count()} CUDA device(s) "
            f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})"
        )
    if dev.type not in ("cpu", "cuda", "mps", "xpu"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {requested!r}")
    return dev
