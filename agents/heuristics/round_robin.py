"""Round-robin engines; each request reads on the side with the shorter read queue, or
alternately on the PE and the DE side."""

from __future__ import annotations

from agents.heuristics.common import shorter_queue_share
from agents.heuristics.pe_only import PeOnly
from runtime.placement.order import DEFAULT_MAX_WAIT_S
from runtime.request import Request
from runtime.view import ClusterView, EngineView

#: How the read side is chosen: ``shorter`` looks at both nodes' read queues;
#: ``alternate`` ignores them and takes PE, DE, PE, ... in turn (requests with hits).
READS = ("shorter", "alternate")


class RoundRobin(PeOnly):
    """Engines as :class:`PeOnly`; the whole request reads on the PE or DE node.

    ``read="shorter"`` (the default): whichever read queue is shorter; ties (both queues
    empty, typically) go to the DE, keeping the scarcer prefill-side storage NICs free
    (see :func:`shorter_queue_share`). ``read="alternate"``: PE and DE side in turn,
    blind to load; with fewer prefill than decode nodes each prefill node then reads more
    than each decode node (2P4D: max/avg SNIC load 1.5).
    """

    name = "round_robin"

    def __init__(self, read: str = "shorter", *, order: str = "fifo",
                 max_wait_s: float = DEFAULT_MAX_WAIT_S) -> None:
        super().__init__(order=order, max_wait_s=max_wait_s)
        if read not in READS:
            raise ValueError(f"round_robin: read must be one of {', '.join(READS)}, "
                             f"got {read!r}")
        self.read = read
        self._pe_turn = False

    def _share(self, request: Request, view: ClusterView, pe: EngineView,
               de: EngineView) -> tuple[float, str]:
        if self.read == "shorter":
            return shorter_queue_share(request, view, pe, de)
        if request.hit_tokens == 0:
            return 0.0, "no hits"
        self._pe_turn = not self._pe_turn
        return (0.0, "read pe (alternating)") if self._pe_turn else (1.0, "read de (alternating)")
