"""The free parameters of a calibration and the deterministic search over them.

The search is Gauss-Newton on log errors in log-parameter space: residual ``i`` is
``ln(ours_i / target_i)``, so over- and under-shoots weigh alike and a parameter's
scale does not matter. The Jacobian comes from one forward difference per parameter at
the start (all evaluated in one batch, so a fan-out runs them side by side) and is then
kept current by Broyden's update; every step is clipped to a trust region and to the
parameters' ranges, and a step that does not lower the squared error is halved. The
best point seen is the answer. Given the same evaluator (the simulator is
deterministic), the same points are visited.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from runtime.cluster import ClusterSpec

#: ``evaluate(points)``: for each point (one value per parameter), the quantity fitted
#: for each target, in target order.
Evaluate = Callable[[Sequence[tuple[float, ...]]], list[list[float]]]

TABLE_KEY = "model.prefill_efficiency"


@dataclass(frozen=True)
class Parameter:
    """A free preset value: its dotted key, plausible range, unit, what it stands for and
    where a search starts.

    For ``model.prefill_efficiency`` the value is the table's top efficiency; the
    table is scaled as a whole, so its shape (the paper's relative throughput by batch)
    is kept.
    """

    key: str
    low: float
    high: float
    unit: str
    meaning: str
    start: float | None = None  # where a search starts (None: the preset's value)

    def __post_init__(self) -> None:
        if not 0 < self.low < self.high:
            raise ValueError(f"{self.key}: the range must satisfy 0 < low < high, "
                             f"got [{self.low}, {self.high}]")
        if self.key.count(".") != 1:
            raise ValueError(f"{self.key}: expected SECTION.KEY")

    def value_in(self, spec: ClusterSpec) -> float:
        """The parameter's value in ``spec``."""
        section, leaf = self.key.split(".")
        value = getattr(getattr(spec, section), leaf)
        return float(value[-1][1]) if self.key == TABLE_KEY else float(value)

    def override(self, value: float, spec: ClusterSpec) -> str:
        """The ``KEY=VALUE`` preset override that sets the parameter to ``value``."""
        return f"{self.key}={self.preset_value(value, spec)}"

    def preset_value(self, value: float, spec: ClusterSpec) -> str:
        """``value`` as the preset file writes it (TOML)."""
        if self.key != TABLE_KEY:
            return f"{value:.4g}"
        table = spec.model.prefill_efficiency
        scale = value / table[-1][1]
        return "[" + ", ".join(f"[{x:g}, {y * scale:.4g}]" for x, y in table) + "]"


@dataclass(frozen=True)
class FitResult:
    """The best point found, what it gave, and every point evaluated on the way."""

    values: tuple[float, ...]
    fitted: tuple[float, ...]
    evaluations: int
    history: list[dict[str, object]] = field(default_factory=list)


def errors_pct(fitted: Sequence[float], targets: Sequence[float]) -> list[float]:
    """Signed error of each fitted quantity against its target, in percent."""
    return [100.0 * (f / t - 1.0) for f, t in zip(fitted, targets, strict=True)]


def fit(evaluate: Evaluate, params: Sequence[Parameter], start: Sequence[float],
        targets: Sequence[float], *, steps: int = 4, probe: float = 0.15,
        max_step: float = 0.4, tolerance: float = 0.005) -> FitResult:
    """Search ``params`` (from ``start``) for the point whose evaluated quantities come
    closest to ``targets`` (sum of squared log errors).

    ``steps``: Gauss-Newton steps after the Jacobian; ``probe``: the relative size of
    the forward differences; ``max_step``: the most a step moves a parameter, in log
    units (0.4: a factor of 1.5), a trust region for a model that is only locally
    linear; the search stops early once a step moves every parameter by less than
    ``tolerance`` (relative)."""
    if len(start) != len(params):
        raise ValueError(f"{len(params)} parameters but {len(start)} start values")
    lo = np.log([p.low for p in params])
    hi = np.log([p.high for p in params])
    u0 = np.clip(np.log(np.asarray(start, dtype=float)), lo, hi)
    log_t = np.log(np.asarray(targets, dtype=float))
    search = _Search(evaluate, log_t)
    jac = search.jacobian(u0, math.log1p(probe), lo, hi)
    u = u0
    r = search.residuals[0]
    shrink = 1.0
    for _ in range(steps):
        step = np.clip(shrink * _gauss_newton(jac, r), -max_step, max_step)
        delta = np.clip(u + step, lo, hi) - u
        if np.max(np.abs(delta)) < math.log1p(tolerance):
            break
        r_new = search.at(u + delta)
        jac = jac + np.outer(r_new - r - jac @ delta, delta) / float(delta @ delta)
        if r_new @ r_new < r @ r:
            u, r, shrink = u + delta, r_new, 1.0
        else:
            shrink /= 2
    return search.result()


def _gauss_newton(jac: np.ndarray, r: np.ndarray) -> np.ndarray:
    step, *_ = np.linalg.lstsq(jac, -r, rcond=None)
    return np.asarray(step)


class _Search:
    """The evaluations made so far (log parameters, log residuals) and the best one."""

    def __init__(self, evaluate: Evaluate, log_targets: np.ndarray) -> None:
        self._evaluate = evaluate
        self._log_t = log_targets
        self.points: list[np.ndarray] = []
        self.residuals: list[np.ndarray] = []
        self._fitted: list[list[float]] = []

    def batch(self, us: list[np.ndarray]) -> list[np.ndarray]:
        fitted = self._evaluate([tuple(float(v) for v in np.exp(u)) for u in us])
        out = []
        for u, values in zip(us, fitted, strict=True):
            if len(values) != len(self._log_t) or min(values) <= 0:
                raise ValueError(f"the evaluator returned {values} for {len(self._log_t)} "
                                 "targets; expected one positive value each")
            self.points.append(u)
            self._fitted.append(list(values))
            self.residuals.append(np.log(values) - self._log_t)
            out.append(self.residuals[-1])
        return out

    def at(self, u: np.ndarray) -> np.ndarray:
        return self.batch([u])[0]

    def jacobian(self, u0: np.ndarray, h: float, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Forward differences at ``u0`` (backward where ``u0 + h`` leaves the range),
        evaluated with ``u0`` in one batch."""
        steps = [h if u0[j] + h <= hi[j] else -h for j in range(len(u0))]
        probes = [u0] + [u0 + s * np.eye(len(u0))[j] for j, s in enumerate(steps)]
        r0, *rs = self.batch(probes)
        return np.column_stack([(rj - r0) / s for rj, s in zip(rs, steps, strict=True)])

    def result(self) -> FitResult:
        costs = [float(r @ r) for r in self.residuals]
        best = int(np.argmin(costs))
        history = [{"values": [float(v) for v in np.exp(u)],
                    "max_error_pct": float(100 * np.max(np.abs(np.expm1(r)))),
                    "rms_log_error": float(np.sqrt(np.mean(r * r)))}
                   for u, r in zip(self.points, self.residuals, strict=True)]
        return FitResult(tuple(float(v) for v in np.exp(self.points[best])),
                         tuple(self._fitted[best]), len(self.points), history)
