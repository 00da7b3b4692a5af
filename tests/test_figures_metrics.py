"""The comparison's metrics figure on a synthetic summary: ticks at the evaluated levels only, and methods with equal
values still told apart (own marker and dash pattern, shifted sideways)."""

from __future__ import annotations

import pandas as pd
import pytest
from matplotlib.image import imread

from pipeline.compare.methods import LABELS
from pipeline.compare.report import metrics_figure, metrics_plot

METHODS = ["noisy", "perona_malik", "diffnet_paper", "diffnet_guided", "unet"]
LEVELS = [0.03, 0.05, 0.07]


@pytest.fixture(scope="module")
def summary() -> pd.DataFrame:
    """Two DiffNets with identical results (they hid each other), one noise model."""
    rows = []
    for i, method in enumerate(METHODS):
        for level in LEVELS:
            score = 0 if method.startswith("diffnet") else i
            rows.append({"method": method, "noise": "rician", "level": level,
                         "psnr_head_mean": 30 - 100 * level + score, "psnr_head_std": 0.1,
                         "ssim_head_mean": 0.9 - level + 0.01 * score, "ssim_head_std": 0.01})
    return pd.DataFrame(rows)


def test_ticks_are_the_evaluated_levels(summary):
    fig = metrics_plot(summary)
    for ax in fig.axes:
        assert list(ax.get_xticks()) == pytest.approx([3, 5, 7])
        assert [t.get_text() for t in ax.get_xticklabels()] == ["3 %", "5 %", "7 %"]


def test_every_method_has_its_own_line_style_and_label(summary):
    fig = metrics_plot(summary)
    for ax in fig.axes:
        lines = [container.lines[0] for container in ax.containers]  # each error bar's data line
        assert len(lines) == len(METHODS)
        assert len({line.get_marker() for line in lines}) == len(METHODS)
        assert len({line.get_color() for line in lines}) == len(METHODS)
        assert len({line.get_linestyle() for line in lines}) >= 4  # solid, dashed, dash-dot, dotted
        # the two DiffNets have equal values: their points are shifted apart, not drawn on top of each other
        paper, guided = lines[METHODS.index("diffnet_paper")], lines[METHODS.index("diffnet_guided")]
        assert list(paper.get_ydata()) == list(guided.get_ydata())
        assert all(a != b for a, b in zip(paper.get_xdata(), guided.get_xdata()))
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [LABELS[m] for m in METHODS]


def test_metrics_figure_writes_a_png(summary, tmp_path):
    image = imread(metrics_figure(summary, tmp_path / "metrics.png"))
    assert image.ndim == 3 and image.std() > 0.01
