"""The paper's baseline: engines in round-robin order, every block read on the PE node."""

from __future__ import annotations

from agents.heuristics.common import Cursor, Heuristic, has_room
from runtime.decision import Decision, Defer, WaitFor
from runtime.placement.order import DEFAULT_MAX_WAIT_S
from runtime.request import Request
from runtime.view import ClusterView, EngineView


class PeOnly(Heuristic):
    """PE and DE in round-robin order (separate cursors; a DE must have room); PE path only.

    Defers when no decode engine has room. Stateful: the cursors advance with
    every decision, so use one instance per run.
    """

    name = "pe_only"

    def __init__(self, *, order: str = "fifo", max_wait_s: float = DEFAULT_MAX_WAIT_S) -> None:
        super().__init__(order=order, max_wait_s=max_wait_s)
        self._pe = Cursor()
        self._de = Cursor()

    def decide(self, request: Request, view: ClusterView) -> Decision | Defer:
        # The DE first: only a decision moves the cursors, and only a DE can lack room.
        de = self._de.take(view.decode_engines(), lambda e: has_room(e, request, view.spec))
        if de is None:
            return Defer("no decode engine has room", WaitFor.DECODE)
        pe = self._pe.take(view.prefill_engines())
        assert pe is not None  # every prefill engine is acceptable
        share, why = self._share(request, view, pe, de)
        return Decision(pe.engine_id, de.engine_id, share, f"round robin, {why}")

    def _share(self, request: Request, view: ClusterView, pe: EngineView,
               de: EngineView) -> tuple[float, str]:
        return 0.0, "read pe"

