"""Least-loaded engines by unfinished tokens; read on the side with the shorter queue."""

from __future__ import annotations

from agents.heuristics.common import Heuristic, shorter_queue_share, with_room
from runtime.decision import Decision, Defer, WaitFor
from runtime.request import Request
from runtime.view import ClusterView


class LeastTokens(Heuristic):
    """The PE with the fewest ``tok`` and the DE with room and the fewest ``tok``
    (ties: lowest id); the whole request reads on the shorter-queue side.
    Defers when no DE has room."""

    name = "least_tokens"

    def decide(self, request: Request, view: ClusterView) -> Decision | Defer:
        room = with_room(view.decode_engines(), request, view.spec)
        if not room:
            return Defer("no decode engine has room", WaitFor.DECODE)
        de = min(room, key=lambda e: (e.tok, e.engine_id))
        pe = min(view.prefill_engines(), key=lambda e: (e.tok, e.engine_id))
        share, why = shorter_queue_share(request, view, pe, de)
        return Decision(pe.engine_id, de.engine_id, share, f"least tokens, {why}")
