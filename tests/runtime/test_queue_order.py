"""Queue orders: which waiting request is placed next, and that none starves."""

from __future__ import annotations

import pytest

from agents import resolve_policy
from runtime.placement import WaitingQueue
from runtime.placement.order import FIFO, QueueOrder
from runtime.preset import load_preset
from runtime.request import Request
from runtime.sim import Simulator
from runtime.slo import BATCH, INTERACTIVE
from runtime.workload.agentic import AgenticWorkload

SPEC = load_preset("tiny")


class Item:
    def __init__(self, request: Request) -> None:
        self.request = request


def _req(rid: int, arrival: float, prompt: int = 100, slo_class: str = INTERACTIVE) -> Request:
    return Request(rid, rid, 0, 0, prompt, 2, arrival, slo_class=slo_class)


def _queue(order: QueueOrder, *requests: Request) -> WaitingQueue[Item]:
    queue: WaitingQueue[Item] = WaitingQueue()
    queue.set_order(order, SPEC)
    for r in requests:
        queue.arrive(Item(r))
    return queue


def test_each_order_picks_its_first_request() -> None:
    reqs = (_req(0, 0.0, 900, BATCH), _req(1, 1.0, 500), _req(2, 2.0, 100))
    assert _queue(FIFO, *reqs).pick(3.0) == 0
    assert _queue(QueueOrder("edf"), *reqs).pick(3.0) == 1  # batch has no deadline: last
    assert _queue(QueueOrder("short"), *reqs).pick(3.0) == 2


def test_a_request_over_max_wait_goes_first() -> None:
    queue = _queue(QueueOrder("short", max_wait_s=5.0), _req(0, 0.0, 900), _req(1, 1.0, 100))
    assert queue.pick(4.0) == 1
    assert queue.pick(5.5) == 0


def test_taken_requests_leave_the_order() -> None:
    queue = _queue(QueueOrder("short"), _req(0, 0.0, 300), _req(1, 1.0, 100), _req(2, 2.0, 200))
    assert queue.take(queue.pick(3.0)).request.request_id == 1
    assert queue.take(queue.pick(3.0)).request.request_id == 2
    assert queue.take(queue.pick(3.0)).request.request_id == 0
    assert len(queue) == 0 and queue.tokens == 0


@pytest.mark.parametrize("bad, message", [
    ({"kind": "lifo"}, "unknown queue order 'lifo'"),
    ({"max_wait_s": 0}, "max_wait_s: must be a number > 0"),
    ({"max_wait_s": -1.0}, "max_wait_s: must be a number > 0"),
    ({"max_wait_s": float("nan")}, "max_wait_s: must be a number > 0"),
])
def test_bad_orders_are_refused(bad: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        QueueOrder(**bad)


@pytest.mark.parametrize("spec", ["dualpath:order=edf,max_wait_s=2,beta_s=0.2",
                                  "dualpath:order=short,max_wait_s=2,beta_s=0.2",
                                  "dualpath_cache:order=edf,max_wait_s=1,beta_s=0.2"])
@pytest.mark.parametrize("seed", range(3))
def test_no_request_waits_past_max_wait_while_others_overtake_it(spec: str, seed: int) -> None:
    """Whenever a request is placed, every request that has waited longer than
    ``max_wait_s`` arrived no earlier than it: overdue requests go first, oldest first."""
    cluster = load_preset("tiny")
    policy = resolve_policy(spec, cluster=cluster).policy
    workload = AgenticWorkload(40, "32k", seed, online=True, aps=12.0, duration_s=3.0,
                               batch_share=0.5, shuffle=True)
    sim = Simulator(cluster, workload)
    sim.set_order(policy.queue_order)
    max_wait = policy.queue_order.max_wait_s
    overtaken = placed = 0
    while (point := sim.next_decision()) is not None:
        request, view = point
        answer = policy.decide(request, view)
        if answer is not None and not hasattr(answer, "wait_for"):
            overdue = [j.request for j in sim.waiting.items
                       if view.time_s - j.request.arrival_s > max_wait]
            assert all(request.arrival_s <= r.arrival_s for r in overdue), (
                f"request {request.request_id} placed at {view.time_s:.2f} s before overdue "
                f"{[r.request_id for r in overdue if r.arrival_s < request.arrival_s]}")
            overtaken += request is not sim.waiting.items[0].request
            placed += 1
        sim.apply(answer)
    assert placed == workload.total_requests
    assert overtaken > 0  # the order did reorder: the check above was exercised


def test_edf_serves_interactive_before_batch_when_requests_wait() -> None:
    """With requests held in the scheduler's queue (a tight beta), EDF cuts the
    interactive class's time to first token against FIFO; batch pays for it."""
    cluster = load_preset("tiny")
    ttft = {}
    for order in ("fifo", "edf"):
        policy = resolve_policy(f"dualpath:order={order},beta_s=0.2,max_wait_s=1000",
                                cluster=cluster).policy
        workload = AgenticWorkload(60, "32k", 3, online=True, aps=20.0, duration_s=3.0,
                                   batch_share=0.5, shuffle=True)
        metrics = Simulator(cluster, workload).run(policy).metrics
        ttft[order] = {k: v["ttft_mean_s"] for k, v in metrics["classes"].items()}
    assert ttft["edf"][INTERACTIVE] < ttft["fifo"][INTERACTIVE]
    assert ttft["edf"][BATCH] > ttft["fifo"][BATCH]
