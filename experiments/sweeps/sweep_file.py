"""A sweep file: its validated form (:class:`Sweep`), where the shipped ones are, and the
simulator config of each of its runs (the format is in :mod:`experiments.sweeps.sweep`)."""

from __future__ import annotations

import itertools
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.evaluation.runner import RunConfig

SWEEP_DIR = Path(__file__).parent
KINDS = ("run", "capacity")
_RUN_FIELDS = {"agents", "mal", "append_scale", "gen_scale", "tool_latency_s", "think_time_s",
               "layerwise", "aps", "duration_s", "online"}
_SHORTHANDS = {"snic_gb_s": "node.snic_gb_s", "cnic_gb_s": "node.cnic_gb_s",
               "kv_bytes_per_token": "model.kv_bytes_per_token"}
_KEYS = {"name", "description", "figure", "paper", "preset", "policies", "seeds", "x",
         "metrics", "kind", "base", "grid"}


@dataclass(frozen=True)
class Sweep:
    """A validated sweep file."""

    name: str
    preset: str
    policies: tuple[str, ...]
    grid: dict[str, tuple[Any, ...]]
    base: dict[str, Any] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)
    x: str | None = None
    metrics: tuple[str, ...] = ("jct_s",)
    kind: str = "run"
    description: str = ""
    figure: str = ""
    paper: str = ""
    text: str = ""

    def __post_init__(self) -> None:
        self._check_lists()
        self._check_grid()
        for point in self.points():  # every point must make a valid config
            for policy in self.policies:
                config_of(self, point, policy, self.seeds[0])

    def _check_lists(self) -> None:
        for name in ("policies", "seeds", "metrics"):
            if not getattr(self, name):
                raise ValueError(f"sweep {self.name}: {name!r} is empty")
        if self.kind not in KINDS:
            raise ValueError(f"sweep {self.name}: kind {self.kind!r}: expected one of {KINDS}")

    def _check_grid(self) -> None:
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"sweep {self.name}: grid.{key} has no values")
        for key in [*self.grid, *self.base]:
            _check_key(self.name, key)
        if self.x is not None and self.x not in self.grid:
            raise ValueError(f"sweep {self.name}: x = {self.x!r} is not a grid key "
                             f"({', '.join(self.grid) or 'the grid is empty'})")

    def points(self) -> list[dict[str, Any]]:
        keys = list(self.grid)
        return [dict(zip(keys, values, strict=True))
                for values in itertools.product(*(self.grid[k] for k in keys))]


def _check_key(sweep: str, key: str) -> None:
    if key in _RUN_FIELDS or key in _SHORTHANDS or key in ("preset", "pd", "length_scale"):
        return
    if key.startswith("set.") and len(key) > 4:
        return
    known = sorted({*_RUN_FIELDS, *_SHORTHANDS, "preset", "pd", "length_scale"})
    raise ValueError(f"sweep {sweep}: unknown parameter {key!r}; expected one of "
                     f"{', '.join(known)} or set.KEY")


def list_sweeps() -> list[str]:
    return sorted(p.stem for p in SWEEP_DIR.glob("*.toml"))


def load_sweep(name_or_path: str) -> Sweep:
    """A sweep by name (``experiments/sweeps/NAME.toml``) or by path."""
    path = SWEEP_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        path = Path(name_or_path)
    if not path.is_file():
        raise ValueError(f"sweep {name_or_path!r} not found; shipped: {', '.join(list_sweeps())}")
    text = path.read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    unknown = set(data) - _KEYS
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
    for required in ("preset", "policies"):
        if required not in data:
            raise ValueError(f"{path}: missing {required!r}")
    grid = {k: tuple(v) if isinstance(v, list) else (v,) for k, v in data.get("grid", {}).items()}
    return Sweep(
        name=str(data.get("name", path.stem)), preset=str(data["preset"]),
        policies=tuple(data["policies"]), grid=grid, base=dict(data.get("base", {})),
        seeds=tuple(int(s) for s in data.get("seeds", [0])), x=data.get("x"),
        metrics=tuple(data.get("metrics", ["jct_s"])), kind=str(data.get("kind", "run")),
        description=str(data.get("description", "")), figure=str(data.get("figure", "")),
        paper=str(data.get("paper", "")), text=text)


def config_of(sweep: Sweep, point: Mapping[str, Any], policy: str, seed: int) -> RunConfig:
    """The simulator config of one (point, policy, seed)."""
    params = {**sweep.base, **point}
    fields: dict[str, Any] = {"policy": policy, "seed": seed, "preset": sweep.preset}
    overrides: list[str] = []
    for key, value in params.items():
        if key == "preset":
            fields["preset"] = str(value)
        elif key == "pd":
            prefill, _, decode = str(value).partition(":")
            overrides += [f"prefill_nodes={int(prefill)}", f"decode_nodes={int(decode)}"]
        elif key == "length_scale":
            fields["append_scale"] = fields["gen_scale"] = float(value)
        elif key in _SHORTHANDS:
            overrides.append(f"{_SHORTHANDS[key]}={value}")
        elif key.startswith("set."):
            overrides.append(f"{key[4:]}={value}")
        else:
            fields[key] = value
    return RunConfig(**fields, overrides=tuple(overrides))
