"""What every heuristic shares: the queue order, the room check, the shorter-queue path,
a round-robin cursor and parameter checks."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from runtime.cluster import ClusterSpec
from runtime.placement.order import DEFAULT_MAX_WAIT_S, FIFO, QueueOrder
from runtime.request import Request
from runtime.view import ClusterView, EngineView


class Heuristic:
    """The base of every heuristic: the queue order it asks its execution for.

    Every heuristic takes ``order`` (``fifo``, ``edf`` or ``short``) and ``max_wait_s``
    (see :mod:`runtime.placement.order`); the execution reads ``queue_order``.
    """

    queue_order: QueueOrder = FIFO

    def __init__(self, *, order: str = "fifo", max_wait_s: float = DEFAULT_MAX_WAIT_S) -> None:
        self.queue_order = QueueOrder(order, max_wait_s)


def has_room(engine: EngineView, request: Request, spec: ClusterSpec) -> bool:
    """A decode engine can take ``request``: HBM for its whole context and a batch slot."""
    return (engine.seq < spec.decode_max_batch
            and engine.free_hbm_bytes >= request.total_tokens * spec.model.kv_bytes_per_token)


def with_room(engines: Sequence[EngineView], request: Request,
              spec: ClusterSpec) -> list[EngineView]:
    """The engines of ``engines`` that pass :func:`has_room` (the need computed once)."""
    need = request.total_tokens * spec.model.kv_bytes_per_token
    cap = spec.decode_max_batch
    return [e for e in engines if e.seq < cap and e.free_hbm_bytes >= need]


def shorter_queue_share(request: Request, view: ClusterView, pe: EngineView,
                        de: EngineView) -> tuple[float, str]:
    """The whole request reads on the side whose node read queue is shorter.

    Ties (typically both queues empty) go to the DE side: prefill nodes are the
    fewer, and every request whatever its path lands on a prefill engine, so
    their SNICs are the scarcer ones to keep free. Returns ``(decode_share,
    reason)``; a request with no hit tokens reads nothing (share 0).
    """
    if request.hit_tokens == 0:
        return 0.0, "no hits"
    pe_q = view.nodes[pe.node_id].read_q_tokens
    de_q = view.nodes[de.node_id].read_q_tokens
    return (1.0, "read de") if de_q <= pe_q else (0.0, "read pe")


class Cursor:
    """A round-robin position over a sequence of engines.

    ``take`` returns the first acceptable engine at or after the position and
    moves the position past it; when none is acceptable it returns ``None`` and
    stays put.
    """

    def __init__(self) -> None:
        self._next = 0

    def take(self, engines: Sequence[EngineView],
             ok: Callable[[EngineView], bool] = lambda e: True) -> EngineView | None:
        n = len(engines)
        for step in range(n):
            i = (self._next + step) % n
            if ok(engines[i]):
                self._next = (i + 1) % n
                return engines[i]
        return None


def number(name: str, value: object, *, minimum: float = 0.0, inclusive: bool = False,
           allow_inf: bool = False) -> float:
    """``value`` as a float, or a ValueError naming parameter ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    above = value >= minimum if inclusive else value > minimum
    if math.isnan(value) or not above or (math.isinf(value) and not allow_inf):
        bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
        kind = "" if allow_inf else " finite"
        raise ValueError(f"{name} must be a{kind} number {bound}, got {value!r}")
    return float(value)
