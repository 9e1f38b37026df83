"""Round-robin engines; each request reads on the side with the shorter read queue."""

from __future__ import annotations

from agents.heuristics.common import shorter_queue_share
from agents.heuristics.pe_only import PeOnly
from runtime.request import Request
from runtime.view import ClusterView, EngineView


class RoundRobin(PeOnly):
    """Engines as :class:`PeOnly`; the whole request reads on the PE or DE node,
    whichever read queue is shorter; ties (both queues empty, typically) go to the DE,
    keeping the scarcer prefill-side storage NICs free (see :func:`shorter_queue_share`)."""

    name = "round_robin"

    def _share(self, request: Request, view: ClusterView, pe: EngineView,
               de: EngineView) -> tuple[float, str]:
        return shorter_queue_share(request, view, pe, de)
