"""Figures for comparisons and learning curves, rendered off-screen.

Figures are built as plain ``matplotlib.figure.Figure`` objects, never through
pyplot: no GUI backend is touched (Agg renders the PNG), and no global figure
registry holds them, so they are freed like any other object.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DEFAULT_METRICS = ("jct_mean_s", "throughput_tok_s", "ttft_p99_s", "slo_attainment")

_LABELS = {
    "jct_mean_s": "mean JCT (s)",
    "throughput_tok_s": "throughput (tok/s)",
    "ttft_p99_s": "p99 TTFT (s)",
    "slo_attainment": "SLO attainment",
}


def _number(value: Any) -> float:
    """A cell as a float; missing or non-numeric cells are NaN (no bar, no error bar)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return math.nan


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def compare_figure(rows: Sequence[Mapping[str, Any]],
                   metrics: Sequence[str] = DEFAULT_METRICS) -> Figure:
    """One bar chart per metric, one bar per policy, 95% CIs as error bars.

    ``rows`` are dicts with ``policy``, ``<metric>`` and optionally ``<metric>_ci95``
    (the half width); a row without a CI gets no error bar.
    """
    if not metrics:
        raise ValueError("compare_figure: no metrics to plot")
    policies = [str(row.get("policy", f"#{i}")) for i, row in enumerate(rows)]
    fig = new_figure(max(4.0, 3.2 * len(metrics)), 3.6)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=True):
        values = [_number(row.get(metric)) for row in rows]
        errors = [_number(row.get(f"{metric}_ci95")) for row in rows]
        x = list(range(len(rows)))
        ax.bar(x, values, color=[f"C{i % 10}" for i in x])  # a NaN height draws no bar
        with_ci = [i for i in x if math.isfinite(values[i]) and math.isfinite(errors[i])]
        if with_ci:
            ax.errorbar(with_ci, [values[i] for i in with_ci], yerr=[errors[i] for i in with_ci],
                        fmt="none", ecolor="black", capsize=4)
        ax.set_xticks(x, policies, rotation=30, ha="right", fontsize=8)
        ax.set_title(_LABELS.get(metric, metric), fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    return fig


def training_figure(steps: Sequence[float], values: Sequence[float], label: str) -> Figure:
    """A learning curve: ``values`` against training ``steps``."""
    if len(steps) != len(values):
        raise ValueError(f"training_figure: {len(steps)} steps but {len(values)} values")
    fig = new_figure(6.0, 3.6)
    ax = fig.subplots()
    ax.plot(list(steps), list(values), marker="o" if len(values) <= 30 else None,
            markersize=3, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    return fig


def save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (folders created) and close it."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=120)
    # Only a figure made through pyplot is registered anywhere; close it there.
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close(fig)
    return out
