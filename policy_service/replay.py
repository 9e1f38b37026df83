"""Deciding a call over again: the shadow policy live, ``decisions agree`` from the log.

Both ask another policy about each request of a call on the view the served
policy saw: the call's view, then the *served* decisions' reservations (the
other policy places nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from runtime.decision import Decision, Defer
from runtime.placement import reserve_view
from runtime.request import Request
from runtime.view import ClusterView

Answer = Decision | Defer | None


def replay_call(view: ClusterView, served: Iterable[tuple[Request, Answer]],
                decide: Callable[[Request, ClusterView], Answer]) -> Iterator[Answer]:
    """``decide``'s answer for each (request, served answer) of a call, in order."""
    for request, answer in served:
        yield decide(request, view)
        if isinstance(answer, Decision):
            view = reserve_view(view, request, answer)


def same_parts(a: Answer, b: Answer) -> tuple[bool, bool, bool] | None:
    """(same prefill engine, same decode engine, same share within 1e-9) where both
    place the request; None where either defers."""
    if not isinstance(a, Decision) or not isinstance(b, Decision):
        return None
    return (a.prefill_engine == b.prefill_engine, a.decode_engine == b.decode_engine,
            abs(a.decode_share - b.decode_share) <= 1e-9)


def same_answer(a: Answer, b: Answer) -> bool:
    """Both defer, or both place the request on the same engines with the same share."""
    parts = same_parts(a, b)
    if parts is None:
        return not isinstance(a, Decision) and not isinstance(b, Decision)
    return all(parts)
