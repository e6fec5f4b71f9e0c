"""How much memory is left, and a refusal with the estimate when a job cannot fit.

A job that needs more memory than the machine has does not fail cleanly: it allocates until the kernel kills it (or
the whole machine swaps). Work whose size follows from its inputs (reading a volume whose header claims its size, a
sliding window over a padded image) is estimated first and refused with the estimate by :func:`check_fits`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported when a device is asked about, not at start-up
    import torch

__all__ = ["available_memory", "format_bytes", "check_fits", "NotEnoughMemoryError"]


class NotEnoughMemoryError(ValueError):
    """A job's memory estimate exceeds what is available (the message gives both and what to change)."""


def format_bytes(n: float) -> str:
    """``n`` bytes as ``"3.2 GiB"``, ``"512.0 MiB"``, ..."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def available_memory(device: str | torch.device = "cpu") -> int | None:
    """Bytes that can still be allocated on ``device``, or None when unknown.

    CPU: ``MemAvailable`` of ``/proc/meminfo`` (Linux), else ``os.sysconf`` free pages; CUDA: the free bytes
    ``torch.cuda.mem_get_info`` reports.
    """
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    if device.type != "cpu":
        return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(estimate: float, what: str, fix: str, device: str | torch.device = "cpu") -> None:
    """Refuse a job whose memory ``estimate`` (bytes) exceeds what ``device`` has available.

    Args:
        estimate: bytes the job will allocate at its peak (an estimate).
        what: the job, e.g. ``"sliding-window inference of a (240, 240, 155) image with a (512, 512, 512) window"``.
        fix: what the user can change, e.g. ``"use a smaller roi_size"``.
        device: where the job allocates.

    Raises:
        NotEnoughMemoryError: naming the estimate, the available memory and the fix.
    """
    available = available_memory(device)
    if available is not None and estimate > available:
        raise NotEnoughMemoryError(
            f"{what} needs about {format_bytes(estimate)} of memory on {device}, but only "
            f"{format_bytes(available)} are available; {fix}"
        )
