"""A resumable training stream: sample ``k`` of the stream, and every random draw made for it, depend only on
``(seed, k)``.

A plain ``DataLoader(shuffle=True)`` over a dataset with MONAI random transforms keeps its state in places a
checkpoint cannot reach: the sampler's permutation and position, the transforms' ``RandomState`` objects (seeded
once when the loader is built, and living in worker processes when ``num_workers > 0``). A run resumed from a
checkpoint then replays the augmentation stream from its start and no longer matches the uninterrupted run.

Here the loader's sampler yields stream positions ``k = 0, 1, 2, ...`` (endless; ignite's ``epoch_length`` sets
the epochs), and :class:`SampleStream` maps ``k`` to ``(pass p, case perm_p[k mod n])`` with a permutation seeded by
``(seed, p)``, and re-seeds the random transforms from ``(seed, k)`` before applying them. Resuming at iteration
``i`` is then just :meth:`StreamSampler.set_start` with ``i * batch_size``: no state to save, any number of workers.
MONAI has no sampler/dataset pair with this property (its ``DistributedSampler`` and ignite's
``ReproducibleBatchSampler`` still leave the transforms' random states to the workers), hence this module.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch.distributed as dist
from monai.transforms import Randomizable
from torch.utils.data import Dataset, Sampler

__all__ = ["SampleStream", "StreamSampler", "stream_sampler_of"]


def _seed_of(*values: int) -> int:
    """A well-mixed 32-bit seed from integers (NumPy's SeedSequence, so nearby inputs give unrelated seeds)."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1)[0])


class SampleStream(Dataset):
    """Endless, epoch-shuffled view of ``dataset`` whose item ``k`` is reproducible from ``(seed, k)`` alone.

    Args:
        dataset: a map-style dataset (e.g. MONAI ``CacheDataset``) whose ``transform`` holds the random transforms.
        seed: stream seed (the bundle's ``seed``).
        shuffle: visit the cases in a new seeded order on every pass (else in dataset order).
    """

    def __init__(self, dataset: Dataset, seed: int = 0, shuffle: bool = True) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        n = len(dataset)  # type: ignore[arg-type]
        if n < 1:
            raise ValueError("SampleStream needs a dataset with at least one item")
        self.dataset = dataset
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self._order: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        """Items per pass (the stream itself is endless)."""
        return len(self.dataset)  # type: ignore[arg-type]

    def index_of(self, k: int) -> int:
        """Dataset index of stream position ``k``."""
        n = len(self)
        p, i = divmod(int(k), n)
        if not self.shuffle:
            return i
        if self._order is None or self._order[0] != p:
            self._order = (p, np.random.default_rng([self.seed, p]).permutation(n))
        return int(self._order[1][i])

    def __getitem__(self, k: int) -> Any:
        if k < 0:
            raise IndexError(f"stream positions are >= 0, got {k}")
        transform = getattr(self.dataset, "transform", None)
        if isinstance(transform, Randomizable):  # MONAI Compose: seeds every random child from this seed
            transform.set_random_state(seed=_seed_of(self.seed, k))
        return self.dataset[self.index_of(k)]


class StreamSampler(Sampler[int]):
    """Endless stream positions for :class:`SampleStream`, from :attr:`start` on.

    In a distributed run rank ``r`` of ``w`` takes positions ``r, r + w, r + 2w, ...`` (rank and world size are read
    when iteration starts), so the ranks see disjoint samples and each rank's stream is resumable on its own.

    Args:
        start: per-rank count of samples already consumed (set by the checkpoint handler on resume).
    """

    def __init__(self, start: int = 0) -> None:
        self.set_start(start)

    def set_start(self, start: int) -> None:
        """Begin the next iteration after ``start`` samples of this rank's stream."""
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ValueError(f"start must be an int >= 0, got {start!r}")
        self.start = start

    def __iter__(self) -> Iterator[int]:
        distributed = dist.is_available() and dist.is_initialized()
        rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        j = self.start
        while True:
            yield j * world + rank
            j += 1


def stream_sampler_of(loader: Any) -> StreamSampler | None:
    """The :class:`StreamSampler` feeding a DataLoader, if any."""
    for sampler in (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        if isinstance(sampler, StreamSampler):
            return sampler
    return None
