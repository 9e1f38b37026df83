"""What an encoding is: its version, padding sizes, share levels and controlled parts.

The features themselves are written by :mod:`env.encoding` (and :mod:`env.tail`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from env.tail import QUEUE_CHOICES, tail_size
from runtime.cluster import ClusterSpec

ENCODING_VERSION = 2
#: Versions this code encodes (an artifact of any of them is served).
VERSIONS = (1, 2)
#: The parts of a decision; the queue part (version 2) picks the request.
ROUTING_PARTS = ("prefill", "decode", "path")
QUEUE = "queue"
PARTS = (*ROUTING_PARTS, QUEUE)

PE_FEATURES = 7
DE_FEATURES = 7
NODE_FEATURES = 4
REQUEST_FEATURES = 5
GLOBAL_FEATURES = 3



@dataclass(frozen=True)
class Encoding:
    """Padding sizes, share levels and which parts of a decision the agent controls."""

    # Defaults fit every shipped preset (ds660b-2p4d: 16 prefill, 32 decode engines).
    max_prefill: int = 16
    max_decode: int = 32
    max_nodes: int = 8
    share_levels: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    control: tuple[str, ...] = ROUTING_PARTS
    version: int = field(default=ENCODING_VERSION)

    def __post_init__(self) -> None:
        for name in ("max_prefill", "max_decode", "max_nodes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        levels = self.share_levels
        if not levels or any(not 0.0 <= s <= 1.0 for s in levels) or list(levels) != sorted(
                set(levels)):
            raise ValueError(f"share_levels must be distinct increasing values in [0, 1], "
                             f"got {levels!r}")
        if not self.control or any(p not in PARTS for p in self.control) or len(
                set(self.control)) != len(self.control):
            raise ValueError(f"control must be a non-empty subset of {PARTS}, got "
                             f"{self.control!r}")
        object.__setattr__(self, "control", tuple(p for p in PARTS if p in self.control))
        if self.version not in VERSIONS:
            raise ValueError(f"encoding version {self.version} is not one this code encodes "
                             f"({', '.join(map(str, VERSIONS))})")
        if QUEUE in self.control and self.version < 2:
            raise ValueError("the queue part needs encoding version 2")
        if not set(self.control) & set(ROUTING_PARTS):
            raise ValueError(f"control must include one of {ROUTING_PARTS}, got "
                             f"{self.control!r}")

    # -- sizes --------------------------------------------------------------
    @cached_property
    def base_size(self) -> int:
        """Features of version 1 (the start of every version's vector)."""
        return (self.max_prefill * PE_FEATURES + self.max_decode * DE_FEATURES
                + self.max_nodes * NODE_FEATURES + REQUEST_FEATURES + GLOBAL_FEATURES)

    @cached_property
    def obs_size(self) -> int:
        if self.version < 2:
            return self.base_size
        return self.base_size + tail_size(self.max_nodes, self.max_prefill)

    @cached_property
    def action_nvec(self) -> tuple[int, ...]:
        sizes = {"prefill": self.max_prefill, "decode": self.max_decode,
                 "path": len(self.share_levels), QUEUE: QUEUE_CHOICES}
        return tuple(sizes[p] for p in self.control)

    @property
    def routes_fully(self) -> bool:
        """The agent controls every part of a decision (needs no fallback)."""
        return all(p in self.control for p in ROUTING_PARTS)

    def check_fits(self, spec: ClusterSpec) -> None:
        """ValueError unless ``spec``'s engines and nodes fit the padding."""
        for what, have, most in (("prefill engines", spec.prefill_engines, self.max_prefill),
                                 ("decode engines", spec.decode_engines, self.max_decode),
                                 ("nodes", spec.nodes, self.max_nodes)):
            if have > most:
                raise ValueError(f"cluster {spec.name!r} has {have} {what}; the encoding pads "
                                 f"to {most} (raise max_{what.split()[0].rstrip('s')})")

    def to_json(self) -> dict[str, object]:
        return {"version": self.version, "max_prefill": self.max_prefill,
                "max_decode": self.max_decode, "max_nodes": self.max_nodes,
                "share_levels": list(self.share_levels), "control": list(self.control)}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Encoding:
        """The encoding an artifact was trained with; ValueError if this code cannot serve it."""
        version = data.get("version")
        if version not in VERSIONS:
            raise ValueError(f"artifact was trained with encoding version {version!r}; this "
                             f"code encodes versions {', '.join(map(str, VERSIONS))}: retrain "
                             "or use a matching release")
        try:
            return cls(version=int(version),
                       max_prefill=int(data["max_prefill"]),  # type: ignore[call-overload]
                       max_decode=int(data["max_decode"]),  # type: ignore[call-overload]
                       max_nodes=int(data["max_nodes"]),  # type: ignore[call-overload]
                       share_levels=tuple(float(s) for s in data["share_levels"]),  # type: ignore[attr-defined]
                       control=tuple(str(p) for p in data["control"]))  # type: ignore[attr-defined]
        except KeyError as err:
            raise ValueError(f"artifact encoding lacks the key {err.args[0]!r}") from err
