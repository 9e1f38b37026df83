"""Figures render off-screen to valid PNG files."""

from __future__ import annotations

import math

import numpy as np
import pytest

from experiments.tracking.plots import compare_figure, save, training_figure

PNG = b"\x89PNG\r\n\x1a\n"

ROWS = [
    {"policy": "pe_only", "jct_mean_s": 120.0, "jct_mean_s_ci95": 4.0,
     "throughput_tok_s": 9e4, "ttft_p99_s": 3.0, "slo_attainment": 0.8},
    {"policy": "dualpath", "jct_mean_s": np.float64(80.0), "jct_mean_s_ci95": None,
     "throughput_tok_s": np.int64(140_000), "throughput_tok_s_ci95": 2e3,
     "ttft_p99_s": math.nan, "slo_attainment": 0.95, "slo_attainment_ci95": 0.01},
    {"policy": "learned", "jct_mean_s": 75.0},
]


def _is_png(path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data.startswith(PNG)


def test_compare_figure_renders(tmp_path):
    fig = compare_figure(ROWS)
    assert len(fig.axes) == 4
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["pe_only", "dualpath", "learned"]
    assert len(ax.collections) == 1  # one error-bar set, only pe_only has a CI
    out = save(fig, tmp_path / "sub" / "compare.png")
    assert _is_png(out)


def test_compare_figure_one_metric_and_no_metrics(tmp_path):
    assert _is_png(save(compare_figure(ROWS, metrics=("jct_mean_s",)), tmp_path / "one.png"))
    with pytest.raises(ValueError, match="no metrics"):
        compare_figure(ROWS, metrics=())


def test_training_figure_renders(tmp_path):
    steps = list(range(0, 10_000, 100))
    values = [-1000 + 5 * math.sqrt(s) for s in steps]
    fig = training_figure(steps, values, "episode return")
    assert fig.axes[0].get_ylabel() == "episode return"
    assert _is_png(save(fig, tmp_path / "curve.png"))
    with pytest.raises(ValueError, match="2 steps but 1 values"):
        training_figure([0, 1], [0.0], "x")
