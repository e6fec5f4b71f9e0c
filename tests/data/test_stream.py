"""SampleStream / StreamSampler: item k of the training stream depends on (seed, k) only, so a resumed loader
(any worker count) continues the uninterrupted stream."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.transforms import Compose, RandGaussianNoised

from lckd_med.data.stream import SampleStream, StreamSampler, stream_sampler_of


def _dataset(n: int = 5) -> Dataset:
    data = [{"x": torch.full((1, 2, 2), float(i))} for i in range(n)]
    return Dataset(data, transform=Compose([RandGaussianNoised(keys="x", prob=1.0, std=1.0)]))


def _batches(loader: DataLoader, count: int) -> list[torch.Tensor]:
    return [b["x"].clone() for b in itertools.islice(iter(loader), count)]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_loader_started_later_continues_the_uninterrupted_stream(num_workers):
    whole = DataLoader(SampleStream(_dataset(), seed=3), batch_size=2, sampler=StreamSampler(), num_workers=0)
    expected = _batches(whole, 6)
    sampler = StreamSampler()
    resumed = DataLoader(SampleStream(_dataset(), seed=3), batch_size=2, sampler=sampler, num_workers=num_workers)
    sampler.set_start(4 * 2)  # 4 iterations of batch 2 already trained
    got = _batches(resumed, 2)
    assert all(torch.equal(a, b) for a, b in zip(got, expected[4:], strict=True))
    assert stream_sampler_of(resumed) is sampler


def test_every_pass_visits_each_case_once_in_a_new_order():
    stream = SampleStream(_dataset(5), seed=0)
    passes = [[stream.index_of(p * 5 + i) for i in range(5)] for p in range(3)]
    assert all(sorted(p) == list(range(5)) for p in passes)
    assert len({tuple(p) for p in passes}) > 1
    assert [SampleStream(_dataset(5), shuffle=False).index_of(k) for k in range(7)] == [0, 1, 2, 3, 4, 0, 1]


def test_different_seeds_give_different_augmentation():
    a, b = SampleStream(_dataset(), seed=0)[0]["x"], SampleStream(_dataset(), seed=1)[0]["x"]
    assert not np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("bad", [-1, 1.5, True, "0"])
def test_bad_seed_is_refused(bad):
    with pytest.raises(ValueError, match="seed"):
        SampleStream(_dataset(), seed=bad)


@pytest.mark.parametrize("bad", [-1, 2.0, False])
def test_bad_start_is_refused(bad):
    with pytest.raises(ValueError, match="start"):
        StreamSampler(bad)


def test_empty_dataset_is_refused():
    with pytest.raises(ValueError, match="at least one"):
        SampleStream(Dataset([]))
