"""Node loss: the requests that touched a lost node go back to the head of the queue."""

from __future__ import annotations

import sys

from runtime.execution.job import Job
from runtime.live.messages import Cancel
from runtime.live.router.records import ON_NODES, Entry, Routing
from runtime.placement.lifecycle import DECODING, RESCHEDULED


def lose_node(router: Routing, node: int) -> None:
    """Reschedule every placed request that touched ``node``; its engines take no more
    work. (A request still placing is rescheduled when its placement resumes.)"""
    spec, nodes = router.spec, router.nodes
    if nodes[node].dead:
        return
    nodes[node].dead = True
    router.counters["node_lost"] += 1
    if router.caches is not None:
        router.caches.node_lost(node, router.clock.now())
    lost = [e for e in router.entries.values()
            if e.phase in ON_NODES and node in e.nodes(spec)]
    print(f"[router] node {node} went away; rescheduling {len(lost)} request(s)",
          file=sys.stderr, flush=True)
    alive = [n for n, s in nodes.items() if not s.dead
             and spec.role_of_node(n) is spec.role_of_node(node)]
    if not alive:
        router.fail(f"node {node} went away and no {spec.role_of_node(node)} node is left")
        return
    for entry in sorted(lost, key=lambda e: e.request.arrival_s, reverse=True):
        for engine in (entry.pe, entry.de):
            other = nodes[spec.node_of(engine)]
            if not other.dead:
                other.channel.send(Cancel(entry.request.request_id, entry.attempt))
        reschedule(router, entry)


def reschedule(router: Routing, entry: Entry) -> None:
    """Undo ``entry``'s placement and put it back at the head under a new attempt."""
    router.ledger.unplace(entry.request, entry.pe, entry.de, prefilled=entry.phase is DECODING)
    entry.phase = RESCHEDULED
    entry.pinned = None  # the picker's engines are not a given any more
    entry.attempt += 1
    entry.completions = 0
    entry.job = Job(entry.request)  # a fresh record; the arrival stays
    router.counters["rescheduled"] += 1
    router.requeue(entry)
