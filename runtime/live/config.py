"""Live-run options and live presets.

A live preset names a cluster preset plus overrides, the run's time and byte
scales, and the workload it runs by default, so ``dualpath cluster --preset
io-bound-live`` needs nothing else. Real bytes moved are the modelled bytes
divided by ``bytes_scale`` (so a small machine holds the working set); wall
time is model time multiplied by ``time_scale``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from runtime.cluster import CacheSpec, ClusterSpec
from runtime.live.transport import TRANSPORTS
from runtime.model import ModelSpec
from runtime.node import NodeSpec
from runtime.preset import load_preset

PRESET_DIR = Path(__file__).parent / "presets"
#: What computes in a live engine (see ``LiveOptions.engine``).
ENGINES = ("emulated", "model")


@dataclass(frozen=True)
class LiveOptions:
    """How a live run executes (not what it runs)."""

    time_scale: float = 1.0
    bytes_scale: int = 32
    transport: str = "shm"
    netns: bool = False
    layerwise: bool = True
    oracle: bool = False
    replicas: int = 2
    # Storage connections per node: reads of one node are FIFO, but several
    # GETs in flight hide the round trips.
    storage_clients: int = 4
    # Where prefill engines' KV lives: "cpu" (host memory) or "cuda" (GPU memory, so the
    # host-to-device copies are real; needs torch with CUDA).
    device: str = "cpu"
    # Wall seconds between a node's state reports when nothing else is sent, and the
    # silence after which the router fences the node (kills it, reschedules its work):
    # far enough apart that a node starved of CPU by a loaded host is not fenced.
    heartbeat_s: float = 0.25
    liveness_s: float = 5.0
    # Wall seconds with requests open and no report about any of them after which the run
    # fails naming them and their phases (a hang becomes an error, not a wait forever).
    stall_s: float = 120.0
    # HTTP fronts (runtime.live.front): a port per engine, in engine order (empty: none),
    # on ``front_host``; the tokenizer of served prompts and the model name they report.
    fronts: tuple[int, ...] = ()
    front_host: str = "127.0.0.1"
    tokenizer: str = "bytes"
    served_model: str = "dualpath-emulated"
    # What computes: "emulated" (durations from the cost model, pseudo-random KV bytes) or
    # "model" (a real transformer of runtime.transformer computes on the KV both paths
    # deliver; bytes at scale 1, compute timed by the clock, the time scale paces links).
    engine: str = "emulated"
    model_size: str = "tiny"
    model_dtype: str = "float32"
    model_seed: int = 0
    # Check every generated token against a float64 recomputation after the run (off for
    # reduced-precision runs measured for speed: bf16 rounding is not a float64 near tie).
    token_check: bool = True

    def __post_init__(self) -> None:
        self._check_fronts()
        self._check_engine()
        if not self.time_scale > 0:
            raise ValueError(f"time_scale must be > 0, got {self.time_scale}")
        if self.bytes_scale < 1:
            raise ValueError(f"bytes_scale must be an integer >= 1, got {self.bytes_scale}")
        if self.transport not in TRANSPORTS:
            raise ValueError(f"transport {self.transport!r}: expected one of "
                             f"{', '.join(TRANSPORTS)}")
        if self.replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {self.replicas}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device {self.device!r}: expected 'cpu' or 'cuda'")
        if not 0 < self.heartbeat_s < self.liveness_s:
            raise ValueError(f"need 0 < heartbeat_s < liveness_s, got {self.heartbeat_s} and "
                             f"{self.liveness_s}")
        if not self.stall_s > 0:
            raise ValueError(f"stall_s must be > 0, got {self.stall_s}")
        if self.storage_clients < 1:
            raise ValueError(f"storage_clients must be >= 1, got {self.storage_clients}")

    def _check_engine(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine {self.engine!r}: expected one of {', '.join(ENGINES)}")
        if self.engine != "model":
            return
        if self.bytes_scale != 1:
            raise ValueError(f"engine 'model' moves the model's real KV: bytes_scale must be 1, "
                             f"got {self.bytes_scale}")
        if self.oracle:
            raise ValueError("engine 'model' computes on the loaded KV: it does not go with "
                             "oracle (zero I/O)")

    def _check_fronts(self) -> None:
        object.__setattr__(self, "fronts", tuple(self.fronts))  # a list, from JSON
        if any(not 0 < p < 65536 for p in self.fronts):
            raise ValueError(f"fronts: ports must lie in 1..65535, got {list(self.fronts)}")
        if self.fronts and self.netns:
            raise ValueError("HTTP fronts run on loopback: they do not go with netns")

    def real_block_bytes(self, spec: ClusterSpec) -> int:
        """Bytes of one Full Block as stored and moved (all layers of ``block_tokens``)."""
        modelled = spec.block_tokens * spec.model.kv_bytes_per_token
        size, rest = divmod(modelled, self.bytes_scale)
        if rest or size % spec.model.layers:
            raise ValueError(
                f"bytes_scale {self.bytes_scale}: a block of {modelled:,} B must divide into "
                f"whole bytes and then into {spec.model.layers} equal layers; pick a divisor "
                f"of {modelled:,} that leaves a multiple of {spec.model.layers}")
        return size


@dataclass(frozen=True)
class LivePreset:
    """A cluster preset plus the defaults of a live run on it."""

    name: str
    cluster: str
    overrides: tuple[str, ...] = ()
    time_scale: float = 1.0
    bytes_scale: int = 32
    agents: int = 8
    mal: str = "32k"
    description: str = ""
    engine_size: str = "tiny"  # the model engine's size (``[model] engine_size``)

    def spec(self, more: tuple[str, ...] = ()) -> ClusterSpec:
        return load_preset(self.cluster, self.overrides + more)


_KEYS = {"name", "cluster", "set", "time_scale", "bytes_scale", "agents", "mal",
         "description", "model"}


def list_live_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def is_live_preset(name_or_path: str) -> bool:
    return (PRESET_DIR / f"{name_or_path}.toml").is_file() or (
        name_or_path.endswith(".toml") and _has_cluster_key(Path(name_or_path)))


def _has_cluster_key(path: Path) -> bool:
    try:
        return "cluster" in tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return False


def load_live_preset(name_or_path: str) -> LivePreset:
    """A live preset by name (``runtime/live/presets/NAME.toml``) or path."""
    path = PRESET_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        path = Path(name_or_path)
    if not path.is_file():
        raise ValueError(f"live preset {name_or_path!r} not found; known: "
                         f"{', '.join(list_live_presets())}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    unknown = set(data) - _KEYS
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; "
                         f"expected {', '.join(sorted(_KEYS))}")
    if "cluster" not in data:
        raise ValueError(f"{path}: missing 'cluster' (the cluster preset it runs)")
    preset = LivePreset(
        name=str(data.get("name", path.stem)), cluster=str(data["cluster"]),
        overrides=tuple(str(s) for s in data.get("set", ())),
        time_scale=float(data.get("time_scale", 1.0)),
        bytes_scale=int(data.get("bytes_scale", 32)), agents=int(data.get("agents", 8)),
        mal=str(data.get("mal", "32k")), description=str(data.get("description", "")),
        engine_size=_engine_size(path, data.get("model", {})))
    LiveOptions(time_scale=preset.time_scale, bytes_scale=preset.bytes_scale
                ).real_block_bytes(preset.spec())  # validates the scales against the spec
    return preset


def _engine_size(path: Path, table: Any) -> str:
    """``[model] engine_size``: the model engine's size when run with ``--engine model``."""
    if not isinstance(table, dict) or set(table) - {"engine_size"}:
        raise ValueError(f"{path}: [model] takes only engine_size, got {table!r}")
    return str(table.get("engine_size", "tiny"))


def spec_to_dict(spec: ClusterSpec) -> dict[str, Any]:
    """A cluster spec as plain JSON-able values (what node processes are told)."""
    def plain(obj: Any) -> dict[str, Any]:
        return {f.name: getattr(obj, f.name) for f in fields(obj) if f.init}
    return {**plain(spec), "node": plain(spec.node), "model": plain(spec.model),
            "cache": plain(spec.cache)}


def spec_from_dict(data: dict[str, Any]) -> ClusterSpec:
    model = dict(data["model"])
    model["prefill_efficiency"] = tuple(tuple(p) for p in model["prefill_efficiency"])
    return ClusterSpec(**{**data, "node": NodeSpec(**data["node"]), "model": ModelSpec(**model),
                          "cache": CacheSpec(**data["cache"]),
                          "snic_factors": tuple(data["snic_factors"]),
                          "compute_factors": tuple(data["compute_factors"])})
