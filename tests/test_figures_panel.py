"""The comparison's visual panel on synthetic slices: radiological orientation, a labelled tile for every image, a
zoom in its own tile, large tiles, no empty tile."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from pipeline.compare.methods import LABELS
from pipeline.compare.report import TILE, panel_plot, visual_panel
from pipeline.figures import radiological

METHODS = ["noisy", "perona_malik", "diffnet_paper", "unet"]


def test_radiological_puts_anterior_up_and_the_patients_right_on_the_left():
    axial = np.zeros((90, 120))  # [x, y] of a RAS volume: x grows to the patient's right, y to the front
    axial[-1, -1] = 1.0  # right anterior corner
    image = radiological(axial)
    assert image.shape == (120, 90)  # rows: anterior to posterior, columns: the patient's right to left
    assert image[0, 0] == 1.0


@pytest.fixture(scope="module")
def shown() -> dict:
    """A bright ellipse ("head", 90 x 120 slice as the IXI volumes give) with a textured patch, and outputs."""
    x, y = np.meshgrid(np.linspace(-1, 1, 90), np.linspace(-1, 1, 120), indexing="ij")
    mask = (x / 0.9) ** 2 + (y / 0.95) ** 2 <= 1
    clean = 0.8 * mask + 0.3 * mask * (np.sin(40 * x) * (y > 0.4))  # fine detail near the front only
    rng = np.random.default_rng(0)
    images = {"clean": clean, "mask": mask, **{m: clean + 0.05 * (i + 1) * rng.standard_normal(clean.shape)
                                                for i, m in enumerate(METHODS)}}
    return {k: torch.as_tensor(v, dtype=torch.float32)[None] for k, v in images.items()}


def test_panel_labels_every_tile_and_draws_no_empty_one(shown):
    fig = panel_plot(shown, METHODS, "synthetic")
    images = [ax for ax in fig.axes if ax.get_images()]
    titles = [ax.get_title() for ax in images]
    # per column (clean, then every method): the whole slice and its zoom; per method: its residual
    assert len(images) == 2 * (len(METHODS) + 1) + len(METHODS)
    assert titles.count("clean (reference)") == titles.count("zoom: clean (reference)") == 1
    for name in METHODS:
        for title in (LABELS[name], f"zoom: {LABELS[name]}", f"residual: {LABELS[name]}"):
            assert titles.count(title) == 1, title
    # the one tile without an image holds the residuals' colour scale
    (scale,) = [ax for ax in fig.axes if not ax.get_images()]
    assert [cax.get_ylabel() for cax in scale.child_axes] == ["residual = image - clean"]


def test_panel_zoom_is_its_own_tile_and_tiles_are_large(shown):
    fig = panel_plot(shown, METHODS, "synthetic")
    fig.canvas.draw()
    tiles = [ax for ax in fig.axes if ax.get_images() and ax.get_title()]
    boxes = [ax.get_window_extent() for ax in tiles]
    for i, a in enumerate(boxes):  # nothing drawn over anything else: no inset on an image
        assert not any(a.overlaps(b) for b in boxes[i + 1:])
    widths_px = [b.width / fig.dpi * 110 for b in boxes]  # save_figure's 110 dpi
    assert min(widths_px) >= 350
    zoom = next(ax for ax in tiles if ax.get_title() == "zoom: clean (reference)").get_images()[0].get_array()
    whole = radiological(shown["clean"][0].numpy())
    assert zoom.shape == (32, 32) and zoom.std() > 0.05  # the textured (detailed) part of the head
    assert any(np.array_equal(zoom, whole[t:t + 32, l:l + 32]) for t in range(0, 89, 4) for l in range(0, 59, 4))


def test_visual_panel_writes_a_large_png(shown, tmp_path):
    path = visual_panel(shown, METHODS, tmp_path / "panel.png", "synthetic")
    image = imread(path)
    assert image.shape[1] >= 350 * (len(METHODS) + 1) and image.std() > 0.01
    assert image.shape[1] == pytest.approx(TILE * 110 * (len(METHODS) + 1), abs=2)
