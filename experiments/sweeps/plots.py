"""A sweep's figures: each metric against the x parameter, one line per policy, one panel
per combination of the other grid parameters; grouped bars when there is no x."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from experiments.tracking.plots import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from experiments.sweeps.sweep_file import Sweep


def sweep_figures(sweep: Sweep, rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, Figure]]:
    """``(name, figure)`` per metric; ``rows`` are the per-(point, policy) means."""
    if sweep.x is not None:
        return [(metric, _lines(sweep, rows, metric)) for metric in sweep.metrics]
    return [(metric, _bars(sweep, rows, metric)) for metric in sweep.metrics]


def _panels(sweep: Sweep) -> list[dict[str, Any]]:
    others = [k for k in sweep.grid if k != sweep.x]
    return [dict(zip(others, values, strict=True))
            for values in itertools.product(*(sweep.grid[k] for k in others))]


def _lines(sweep: Sweep, rows: Sequence[Mapping[str, Any]], metric: str) -> Figure:
    assert sweep.x is not None
    panels = _panels(sweep)
    fig = new_figure(4.2 * len(panels), 3.6)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    xs = list(sweep.grid[sweep.x])
    numeric = all(isinstance(v, int | float) for v in xs)
    for ax, panel in zip(axes, panels, strict=True):
        for i, policy in enumerate(sweep.policies):
            mine = [r for r in rows if r["policy"] == policy
                    and all(r[k] == v for k, v in panel.items())]
            by_x = {r[sweep.x]: r[metric] for r in mine}
            pos = xs if numeric else list(range(len(xs)))
            ax.plot(pos, [by_x.get(x, math.nan) for x in xs], marker="o", color=f"C{i % 10}",
                    label=policy)
        if not numeric:
            ax.set_xticks(range(len(xs)), [str(x) for x in xs])
        ax.set_xlabel(sweep.x)
        ax.set_ylabel(metric)
        ax.set_title(", ".join(f"{k}={v}" for k, v in panel.items()) or sweep.name, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return fig


def _bars(sweep: Sweep, rows: Sequence[Mapping[str, Any]], metric: str) -> Figure:
    points = sweep.points() or [{}]
    fig = new_figure(max(4.5, 1.2 * len(points) * len(sweep.policies) ** 0.5 + 3), 3.8)
    ax = fig.subplots()
    width = 0.8 / len(sweep.policies)
    for i, policy in enumerate(sweep.policies):
        values = [next((r[metric] for r in rows if r["policy"] == policy and r["point"] == k),
                       math.nan) for k in range(len(points))]
        ax.bar([k + i * width for k in range(len(points))], values, width,
               color=f"C{i % 10}", label=policy)
    labels = [", ".join(f"{k}={v}" for k, v in p.items()) or sweep.name for p in points]
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(points))], labels, fontsize=8)
    ax.set_ylabel(metric)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    return fig
