"""Shared pytest fixtures: small procedural BraTS datasets on disk (2 mm grid, 120x120x78), and ``one_thread``.

Session-scoped and lazy: a dataset is written once, the first time a test asks for it. Tests must treat the
returned directories as read-only (copy them to ``tmp_path`` before modifying anything). Shared helper functions
are in ``tests/testkit.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lckd_med.data.synthetic import write_dataset


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``): their
    tensors are tiny, and threads competing for the few busy cores of a test machine make them many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def synthetic_brats2018(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of 6 BraTS2018-layout cases: ``<root>/{HGG,LGG}/Brats18_SYN_00i_1/Brats18_SYN_00i_1_<suffix>.nii.gz``.

    4 HGG (all with ET) and 2 LGG (the first LGG has no ET, the second has patchy ET); labels {0, 1, 2, 4};
    every sequence present.
    """
    root = tmp_path_factory.mktemp("synthetic_brats2018")
    write_dataset(root, 6, seed=2018, spacing=2.0, release=2018, lgg_fraction=2 / 6)
    return root


@pytest.fixture(scope="session")
def synthetic_brats2023(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of 3 flat BraTS 2023 GLI cases: ``<root>/BraTS-GLI-0000i-000/BraTS-GLI-0000i-000-<t2f|t1n|t1c|t2w|seg>``.

    2 with ET (label 3) and 1 without; labels {0, 1, 2, 3}; every sequence present.
    """
    root = tmp_path_factory.mktemp("synthetic_brats2023")
    write_dataset(root, 3, seed=2023, spacing=2.0, release=2023, lgg_fraction=1 / 3)
    return root


@pytest.fixture(scope="session")
def synthetic_brats2018_missing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of 4 BraTS2018-layout cases of which 2 lack one or two sequence files on disk (segmentation kept)."""
    root = tmp_path_factory.mktemp("synthetic_brats2018_missing")
    write_dataset(root, 4, seed=7, spacing=2.0, release=2018, lgg_fraction=0.25, missing_fraction=0.5)
    return root
