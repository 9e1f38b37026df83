"""Requests served over HTTP: a decode node's front submits them and the router runs them.

A request the endpoint picker placed comes pinned to the picker's decision (the
front's decode engine, the prefill engine of ``x-prefiller-host-port`` and the share
of ``x-dualpath-decode-share``): the router keeps it, so what runs is what the
policy chose. Without a decision (a gateway failing open), the router's own policy
chooses the prefill engine and path; the decode engine stays the front's, where the
client waits. A pinned prefill engine whose node went down, or a request
rescheduled after a node loss, falls back to the router's policy the same way. A
decode engine without room now makes the request wait, as any execution's would.
Blocks of finished prompts count as stored (:class:`StoredBlocks`), for requests
whose hit tokens the router counts itself.
"""

from __future__ import annotations

import dataclasses

from runtime.decision import Decision, Defer, WaitFor
from runtime.execution.job import Job
from runtime.live.messages import Reject, Submit
from runtime.live.router.records import Entry, Routing
from runtime.placement import unavailable
from runtime.serving.served import served_request
from runtime.view import ClusterView, Role


def admit(router: Routing, node: int, msg: Submit) -> None:
    """Queue a submitted request, or tell its front why not."""
    why = _refusal(router, node, msg)
    if why is not None:
        router.nodes[node].channel.send(Reject(msg.rid, *why))
        return
    spec = router.spec
    hit = msg.hit if msg.hit >= 0 else router.stored.leading(msg.hashes) * spec.block_tokens
    try:  # model time starts a moment after the nodes are up: none is before 0
        request = served_request(msg.rid, msg.agent, msg.prompt, msg.hashes, hit, msg.gen,
                                 max(0.0, router.clock.now()), spec.block_tokens,
                                 msg.slo_class)
    except ValueError as exc:
        router.nodes[node].channel.send(Reject(msg.rid, 400, str(exc)))
        return
    entry = Entry(Job(request), front=msg.de, prompt_ids=msg.tokens)
    if msg.pe >= 0:
        entry.pinned = Decision(msg.pe, msg.de, msg.share)
    router.counters["served_pinned" if msg.pe >= 0 else "served_local"] += 1
    router.admit(entry)


def _refusal(router: Routing, node: int, msg: Submit) -> tuple[int, str] | None:
    spec = router.spec
    if not router.serving:
        return 503, "the cluster is not taking requests (it is shutting down)"
    if msg.rid in router.entries:
        return 409, f"request id {msg.rid} is already in use"
    if not (spec.role_of(msg.de) is Role.DECODE and spec.node_of(msg.de) == node):
        return 400, f"engine {msg.de} is not a decode engine of node {node}"
    if msg.pe >= 0 and not (msg.pe < spec.engines and spec.role_of(msg.pe) is Role.PREFILL):
        return 400, f"engine {msg.pe} is not a prefill engine"
    if not 0.0 <= msg.share <= 1.0:
        return 400, f"decode share {msg.share} is not in [0, 1]"
    if not msg.prompt > 0 and msg.gen >= 1:
        return 400, "an empty prompt"
    most = spec.node.de_hbm_kv_bytes // spec.model.kv_bytes_per_token
    if msg.prompt + msg.gen > most:
        return 400, (f"prompt ({msg.prompt} tokens) plus max_tokens ({msg.gen}) exceed what "
                     f"a decode engine holds ({most} tokens)")
    return None


async def ask(router: Routing, entry: Entry, view: ClusterView) -> Decision | Defer | None:
    """The decision for ``entry``: the router's policy's, or for a served request its pinned
    one (while its engines are up), on the front's decode engine once that has room."""
    if entry.front < 0:
        return await router.decider(entry.request, view)
    if entry.pinned is not None and unavailable(entry.pinned, router.down) is not None:
        entry.pinned = None
        router.counters["served_unpinned"] += 1
    answer = (entry.pinned if entry.pinned is not None
              else await router.decider(entry.request, view))
    if not isinstance(answer, Decision):
        return answer
    if answer.decode_engine != entry.front:
        answer = dataclasses.replace(answer, decode_engine=entry.front)
    why = router.ledger.no_room(entry.request, entry.front)
    return answer if why is None else Defer(why, WaitFor.DECODE)


def finished(router: Routing, entry: Entry) -> None:
    """A served request's prompt blocks are in storage now."""
    if entry.front >= 0 and entry.request.block_hashes:
        router.stored.add(entry.request.block_hashes)
