"""The router's watch over its nodes: fencing the silent ones, failing a stalled run."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from runtime.live.router.records import NodeState


class Watched(Protocol):
    """What the watch reads and does of the router."""

    liveness_s: float
    stall_s: float
    nodes: dict[int, NodeState]
    open: int
    progress_at: float  # wall clock of the last report about a request
    counters: Counter[str]
    kill: Callable[[int], None] | None

    def node_lost(self, node: int) -> None: ...

    def fail(self, message: str) -> None: ...


async def watch_nodes(router: Watched) -> None:
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
            router.progress_at = max(router.progress_at, now)
            continue
        if router.open and now - router.progress_at > router.stall_s:
            router.fail(f"no request progressed for {router.stall_s:g} s")  # run() names them
            return
        for node, state in router.nodes.items():
            if not state.dead and state.stats is None and now - state.heard > router.liveness_s:
                print(f"[router] node {node} silent for {now - state.heard:.1f} s: fencing it",
                      file=sys.stderr, flush=True)
                router.counters["fenced"] += 1
                if router.kill is not None:
                    router.kill(node)
                router.node_lost(node)


def inject_kill(router: Watched, node: int, at_s: float) -> None:
    """The ``kill_node`` fault: SIGKILL node ``node`` (due at model time ``at_s``)."""
    print(f"[router] fault: killing node {node} at t={at_s:.2f} s (model)", file=sys.stderr,
          flush=True)
    if router.kill is not None:
        router.kill(node)
