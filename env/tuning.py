"""The tuning mode's action space: discrete levels of a heuristic's parameters."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

DEFAULT_TUNING_LEVELS: tuple[tuple[str, tuple[float, ...]], ...] = (
    ("alpha_s", (0.5, 1.0, 2.0, 3.0, 6.0, 12.0)),
    ("beta_s", (1.0, 2.5, 5.0, 10.0, 20.0)),
    ("z_slack", (1.0, 1.05, 1.2, 1.5)),
    ("split", (0.0, 1.0)),
)


@dataclass(frozen=True)
class Tuning:
    """The tuning mode's action: one discrete level per heuristic parameter, held for
    ``window_s`` of simulated time. The parameter names are the tuned heuristic's
    (the caller's factory reads them); the defaults fit ``dualpath``/``dualpath_split``,
    where ``split`` ≥ 0.5 picks the split rule."""

    levels: tuple[tuple[str, tuple[float, ...]], ...] = DEFAULT_TUNING_LEVELS
    window_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.levels:
            raise ValueError("tuning levels are empty")
        names = [name for name, _ in self.levels]
        if len(set(names)) != len(names):
            raise ValueError(f"tuning parameter names repeat: {names}")
        for name, values in self.levels:
            if not values:
                raise ValueError(f"tuning parameter {name!r} has no levels")
        if not self.window_s > 0 or math.isinf(self.window_s):
            raise ValueError(f"window_s must be a finite number > 0, got {self.window_s!r}")

    @cached_property
    def action_nvec(self) -> tuple[int, ...]:
        return tuple(len(values) for _, values in self.levels)

    def params(self, action: Sequence[int] | np.ndarray) -> dict[str, float]:
        """The parameter values an action stands for."""
        if len(action) != len(self.levels):
            raise ValueError(f"tuning action has {len(action)} parts, expected "
                             f"{len(self.levels)}")
        return {name: values[int(a)] for (name, values), a in zip(self.levels, action,
                                                                  strict=True)}

    def to_json(self) -> dict[str, object]:
        return {"levels": [[name, list(values)] for name, values in self.levels],
                "window_s": self.window_s}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Tuning:
        try:
            levels = tuple((str(n), tuple(float(v) for v in vs))
                           for n, vs in data["levels"])  # type: ignore[attr-defined]
            return cls(levels=levels, window_s=float(data["window_s"]))  # type: ignore[arg-type]
        except (KeyError, TypeError) as err:
            raise ValueError(f"artifact tuning block is malformed: {err}") from err
