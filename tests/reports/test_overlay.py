"""Tests of lckd_med.reports.overlay: the picture of a segmentation (three slices through the tumour, labels overlaid
in their colours, a legend), checked for its size and for the overlay's presence where the tumour is."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread

from lckd_med.constants import BRATS_2023
from lckd_med.reports.overlay import LABEL_COLOURS, save_overlay, slice_centre
from tests.testkit import mri_like

SHAPE = (40, 44, 30)
AFFINE = np.diag([-1.0, -1.0, 1.5, 1.0])


def head() -> np.ndarray:
    data = np.zeros(SHAPE, np.float32)
    data[4:36, 4:40, 3:27] = mri_like((32, 36, 24), 0, 100.0, 900.0)
    return data


def tumour(et: int = 4) -> np.ndarray:
    labels = np.zeros(SHAPE, np.uint8)
    labels[14:30, 16:32, 8:22] = 2
    labels[17:27, 19:29, 11:19] = 1
    labels[19:25, 21:27, 12:18] = et
    return labels


def coloured(path, colour=None) -> int:
    """Pixels whose colour is not grey (R, G, B apart), or close to one blended label colour."""
    rgb = imread(path)[..., :3]
    if colour is None:
        return int(((rgb.max(axis=-1) - rgb.min(axis=-1)) > 0.15).sum())
    hue = np.asarray(colour) / max(colour)
    norm = rgb / np.clip(rgb.max(axis=-1, keepdims=True), 1e-6, None)
    return int((np.abs(norm - hue).max(axis=-1) < 0.25).sum())


def test_picture_size_and_the_overlay_where_the_tumour_is(tmp_path):
    kwargs = {"sequences": ["flair", "t1ce"], "background_name": "t1ce", "title": "case 1 (synthetic)"}
    with_tumour = save_overlay(tmp_path / "a.png", head(), tumour(), AFFINE, **kwargs)
    without = save_overlay(tmp_path / "b.png", head(), np.zeros(SHAPE, np.uint8), AFFINE, **kwargs)
    assert with_tumour.stat().st_size < 200_000
    assert imread(with_tumour).shape[:2] == (336, 800)  # 10 x 4.2 inches at 80 dpi
    # the legend (and title) are in both pictures; the overlay adds hundreds of coloured pixels in the slices
    assert coloured(with_tumour) > coloured(without) + 1000
    # every tumour part shows in its own colour (blended over grey), the oedema most
    extra = {part: coloured(with_tumour, c) - coloured(without, c) for part, c in LABEL_COLOURS.items()}
    assert all(n > 30 for n in extra.values()), extra
    assert extra["ED"] > extra["ET"]


def test_labels_of_the_2023_convention_are_drawn_too(tmp_path):
    kwargs = {"sequences": ["t2"], "background_name": "t2", "convention": BRATS_2023}
    path = save_overlay(tmp_path / "c.png", head(), tumour(et=3), AFFINE, **kwargs)
    plain = save_overlay(tmp_path / "d.png", head(), np.zeros(SHAPE, np.uint8), AFFINE, **kwargs)
    assert coloured(path, LABEL_COLOURS["ET"]) - coloured(plain, LABEL_COLOURS["ET"]) > 30


def test_slices_go_through_the_tumour_else_the_brain_else_the_middle():
    assert slice_centre(tumour(), head()) == (22, 24, 14)  # the labelled box 14..29, 16..31, 8..21
    assert slice_centre(np.zeros(SHAPE, np.uint8), head()) == (20, 22, 14)
    assert slice_centre(np.zeros(SHAPE, np.uint8), np.zeros(SHAPE)) == (20, 22, 15)


def test_shapes_must_agree(tmp_path):
    with pytest.raises(ValueError, match="3-D of one shape"):
        save_overlay(tmp_path / "x.png", head()[:-1], tumour(), AFFINE, sequences=["t1"], background_name="t1")
    assert not (tmp_path / "x.png").exists()
