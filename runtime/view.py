"""What a scheduler may look at: immutable snapshots of engines, nodes, links and the queue."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from runtime.cluster import ClusterSpec


_View = TypeVar("_View")


def _slot_init(cls: type[_View]) -> type[_View]:
    """Give the frozen slots dataclass ``cls`` an ``__init__`` that stores each field
    through its slot's descriptor.

    The simulator builds views on every scheduling step, and the generated
    ``__init__`` of a frozen dataclass calls ``object.__setattr__`` per field, which
    costs about twice as much. Same signature and defaults; the instances are as
    frozen as before (``__setattr__`` still raises).
    """
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    namespace: dict[str, Any] = {f"_set_{n}": getattr(cls, n).__set__ for n in names}
    params = []
    for f in fields(cls):  # type: ignore[arg-type]
        assert f.default_factory is MISSING, "defaults only"
        if f.default is MISSING:
            params.append(f.name)
        else:
            namespace[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
    body = "".join(f"    _set_{n}(self, {n})\n" for n in names)
    exec(f"def __init__(self, {', '.join(params)}):\n{body}", namespace)
    namespace["__init__"].__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = namespace["__init__"]  # type: ignore[method-assign]
    return cls


class Role(StrEnum):
    PREFILL = "prefill"
    DECODE = "decode"


@_slot_init
@dataclass(frozen=True, slots=True)
class EngineView:
    """One engine (one GPU).

    ``seq`` and ``tok`` count requests assigned to the engine and not yet
    finished there. A prefill engine counts the tokens it still has to compute
    (the prompt tokens not loaded from storage); a decode engine counts the
    context tokens of its requests (prompt plus tokens to generate), which is
    what occupies its HBM. ``free_hbm_bytes`` is HBM left for KV after
    reservations. The engine's CNIC (its link view) is busy with queued KV
    transfers until ``cnic_busy_until_s``; see :meth:`ClusterView.cnic_backlog_bytes`.
    """

    engine_id: int
    role: Role
    node_id: int
    group: int
    seq: int
    tok: int
    free_hbm_bytes: float
    cnic_busy_until_s: float = 0.0


@_slot_init
@dataclass(frozen=True, slots=True)
class NodeView:
    """One node. ``read_q_tokens`` is the node's storage read queue (its SNIC link view):
    tokens of KV requested from storage through this node and not yet read."""

    node_id: int
    role: Role
    read_q_tokens: float
    snic_bytes_s: float
    free_buffer_bytes: float


@_slot_init
@dataclass(frozen=True, slots=True)
class QueueView:
    """Requests waiting for a decision (FIFO), with their total prompt tokens."""

    requests: int
    tokens: int


@_slot_init
@dataclass(frozen=True, slots=True)
class ClusterView:
    """A snapshot of the cluster at ``time_s`` that a policy decides on; never mutated."""

    time_s: float
    spec: ClusterSpec
    engines: tuple[EngineView, ...]
    nodes: tuple[NodeView, ...]
    queue: QueueView

    def prefill_engines(self) -> tuple[EngineView, ...]:
        return self.engines[: self.spec.prefill_engines]

    def decode_engines(self) -> tuple[EngineView, ...]:
        return self.engines[self.spec.prefill_engines:]

    def cnic_backlog_bytes(self, engine_id: int) -> float:
        """KV bytes still queued on the engine's CNIC at ``time_s``."""
        busy = self.engines[engine_id].cnic_busy_until_s - self.time_s
        return max(0.0, busy) * self.spec.node.cnic_kv_bytes_s
