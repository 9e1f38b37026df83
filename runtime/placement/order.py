"""Which waiting request is placed next: the queue orders a policy may choose.

- ``fifo``: arrival order (the paper's);
- ``edf``: earliest TTFT deadline first (arrival + its class's target; ``batch``,
  which has none, after every interactive request, by arrival);
- ``short``: fewest tokens to load and compute (the prompt) first.

Whatever the order, a request that has waited longer than ``max_wait_s`` goes first
(the longest-waiting first), so no request starves behind later, more urgent or
shorter ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from runtime.cluster import ClusterSpec
from runtime.request import Request
from runtime.slo import ttft_target_s

ORDERS = ("fifo", "edf", "short")
DEFAULT_MAX_WAIT_S = 30.0

Key = Callable[[Request], tuple[float, float]]


@dataclass(frozen=True)
class QueueOrder:
    """An order and its starvation bound (see the module docstring)."""

    kind: str = "fifo"
    max_wait_s: float = DEFAULT_MAX_WAIT_S

    def __post_init__(self) -> None:
        if self.kind not in ORDERS:
            raise ValueError(f"order: unknown queue order {self.kind!r}; choose one of "
                             f"{', '.join(ORDERS)}")
        wait = self.max_wait_s
        if (isinstance(wait, bool) or not isinstance(wait, int | float) or math.isnan(wait)
                or wait <= 0):
            raise ValueError(f"max_wait_s: must be a number > 0 (seconds), got {wait!r}")

    @property
    def fifo(self) -> bool:
        return self.kind == "fifo"

    def key(self, spec: ClusterSpec) -> Key:
        """The sort key of a waiting request on ``spec`` (smallest first)."""
        if self.kind == "edf":
            return lambda r: (r.arrival_s + ttft_target_s(spec, r.slo_class), r.arrival_s)
        return lambda r: (float(r.prompt_tokens), r.arrival_s)


FIFO = QueueOrder()


def order_of(policy: object) -> QueueOrder:
    """The queue order a policy asks for (``queue_order``), FIFO when it names none."""
    order = getattr(policy, "queue_order", None)
    return order if isinstance(order, QueueOrder) else FIFO
