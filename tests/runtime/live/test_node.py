"""A node's handling of cancellations racing a request's next attempt."""

from __future__ import annotations

from types import SimpleNamespace

from runtime.live.config import LiveOptions, spec_to_dict
from runtime.live.messages import DeReady, Layer
from runtime.live.node import Node, NodeConfig
from runtime.preset import load_preset


def _node() -> Node:
    spec = load_preset("tiny", ("block_tokens=1024",))
    cfg = NodeConfig(node_id=0, spec=spec_to_dict(spec), options=LiveOptions().__dict__,
                     router=("127.0.0.1", 1), storage=("127.0.0.1", 1))
    return Node(cfg)


def test_a_cancel_keeps_peer_messages_of_the_next_attempt():
    # Attempt 0 of request 7 is cancelled (its decode node was lost) and attempt 1 placed
    # elsewhere; the new decode node's "de_ready" reached this node before the cancel.
    node = _node()
    cancelled = []
    node.prefill[0] = SimpleNamespace(cancel=cancelled.append)  # type: ignore[assignment]
    old = SimpleNamespace(attempt=0, pe=0, de=1)
    node.jobs[7] = old  # type: ignore[assignment]
    early = DeReady(rid=7, attempt=1, offset=0)
    node._early[7].append(Layer(rid=7, attempt=0, layer=0))
    node._early[7].append(early)
    node._cancel(7, 0)
    assert cancelled == [old] and 7 not in node.jobs
    assert node._early[7] == [early]  # waits for attempt 1's placement
    node.pool.shutdown()


def test_a_stale_cancel_leaves_a_later_attempt_alone():
    node = _node()
    newer = SimpleNamespace(attempt=2, pe=0, de=1)
    node.jobs[7] = newer  # type: ignore[assignment]
    node._cancel(7, 1)
    assert node.jobs[7] is newer and node.counters["cancelled"] == 0
    node.pool.shutdown()
