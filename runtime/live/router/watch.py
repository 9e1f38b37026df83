"""The router's watch over its nodes: fencing the silent ones, failing a stalled run."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runtime.live.router.core import Router


async def watch_nodes(router: Router) -> None:
    """Fence a node silent for ``liveness_s`` (stopped, hung, cut off): kill it, so it
    cannot act on work that is rescheduled elsewhere, and reschedule its requests.
    Fail the run, naming what is open, if nothing progressed for ``stall_s``."""
    period = min(0.5, router.liveness_s / 4)
    last = time.monotonic()
    while True:
        await asyncio.sleep(period)
        now = time.monotonic()
        late, last = now - last - period, now
        if late > 1.0:
            # The router itself was stalled (a blocking policy call, a starved process):
            # the nodes' reports wait unread in its sockets, so silence proves nothing.
            for state in router.nodes.values():
                state.heard = max(state.heard, now)
            router._progress_at = max(router._progress_at, now)
            continue
        if router.open and now - router._progress_at > router.stall_s:
            router.fail(f"no request progressed for {router.stall_s:g} s")  # run() names them
            return
        for node, state in router.nodes.items():
            if not state.dead and state.stats is None and now - state.heard > router.liveness_s:
                print(f"[router] node {node} silent for {now - state.heard:.1f} s: fencing it",
                      file=sys.stderr, flush=True)
                router.counters["fenced"] += 1
                if router._kill is not None:
                    router._kill(node)
                router.node_lost(node)
