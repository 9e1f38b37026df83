"""Checking a decision and the reservations it makes: one rule for every execution.

:class:`Ledger` applies decisions to :class:`EngineLoad` s (the simulator's
engines, the live router's and nodes' counts); :func:`reserve_view` applies the
same reservation to a :class:`ClusterView` (a scheduler deciding several
requests on one snapshot, the service's reservations not yet reported).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from runtime.cluster import ClusterSpec
from runtime.decision import Decision, split_tokens
from runtime.placement.load import EngineLoad
from runtime.placement.plan import load_plan
from runtime.request import Request
from runtime.view import ClusterView, EngineView, NodeView, QueueView


class PlacementError(ValueError):
    """A decision that cannot be applied: not a prefill/decode engine, or no room."""


def prefill_tokens(request: Request) -> int:
    """Tokens the prefill engine computes (a full hit still computes its last token)."""
    appended = request.appended_tokens
    return appended if appended > 1 else 1


def check_engines(spec: ClusterSpec, request: Request, d: Decision) -> None:
    """Raise :class:`PlacementError` unless ``d`` names a prefill and a decode engine."""
    npe, rid = spec.prefill_engines, request.request_id
    if not 0 <= d.prefill_engine < npe:
        raise PlacementError(f"request {rid}: prefill_engine {d.prefill_engine} is not a "
                             f"prefill engine (0..{npe - 1})")
    if not npe <= d.decode_engine < spec.engines:
        raise PlacementError(f"request {rid}: decode_engine {d.decode_engine} is not a decode "
                             f"engine ({npe}..{spec.engines - 1})")


def unavailable(d: Decision, down: Callable[[int], str | None]) -> str | None:
    """Why ``d`` cannot be placed now because an engine it names is down (``down(engine)``
    says why, or ``None``); ``None`` if both are up. Callers defer such a decision (the
    view shows down engines full, so a load-aware policy does not pick them)."""
    for engine in (d.prefill_engine, d.decode_engine):
        why = down(engine)
        if why is not None:
            return f"engine {engine} {why}"
    return None


class Ledger:
    """The reservations of every engine of a cluster (``loads[e]`` for engine ``e``)."""

    # The simulator calls place and finished once per request: they change the
    # loads' fields directly rather than through EngineLoad's methods (same arithmetic).
    __slots__ = ("spec", "loads", "_kvb", "_npe", "_engines", "_block", "_max_batch")

    def __init__(self, spec: ClusterSpec, loads: Sequence[EngineLoad] | None = None) -> None:
        self.spec = spec
        self.loads: list[EngineLoad] = list(loads) if loads is not None else [
            EngineLoad(spec.node.pe_hbm_kv_bytes if e < spec.prefill_engines
                       else spec.node.de_hbm_kv_bytes)
            for e in range(spec.engines)]
        self._kvb = spec.model.kv_bytes_per_token
        self._npe = spec.prefill_engines
        self._engines = spec.engines
        self._block = spec.block_tokens
        self._max_batch = spec.decode_max_batch

    def place(self, request: Request, d: Decision,
              storage_tokens: int | None = None) -> tuple[int, int]:
        """Check ``d`` and take its capacity; returns the tokens read from storage on the
        (PE, DE) side: of ``storage_tokens`` (the hit tokens no cache serves; all of
        them when ``None``). Raises :class:`PlacementError` (taking nothing) unless ``d``
        names a prefill and a decode engine and the decode engine has HBM and a batch
        slot for it."""
        if not (0 <= d.prefill_engine < self._npe <= d.decode_engine < self._engines):
            check_engines(self.spec, request, d)  # raises, naming the wrong engine
        total = request.total_tokens
        need = total * self._kvb
        de = self.loads[d.decode_engine]
        if de.free_hbm < need or de.seq >= self._max_batch:
            raise PlacementError(f"request {request.request_id}: "
                                 f"{self.no_room(request, d.decode_engine)}")
        de.seq += 1
        de.tok += total
        de.free_hbm -= need
        pe = self.loads[d.prefill_engine]
        pe.seq += 1
        appended = request.appended_tokens
        pe.tok += appended if appended > 1 else 1  # prefill_tokens(request), inlined
        stored = request.hit_tokens if storage_tokens is None else storage_tokens
        return split_tokens(stored, d.decode_share, self._block)

    def no_room(self, request: Request, de: int) -> str | None:
        """Why decode engine ``de`` cannot take ``request`` now (None: it can)."""
        load, need = self.loads[de], request.total_tokens * self._kvb
        if load.free_hbm >= need and load.seq < self._max_batch:
            return None
        return (f"decode engine {de} has no room (needs {need:.0f} B of HBM, has "
                f"{load.free_hbm:.0f} B free, {load.seq}/{self._max_batch} sequences)")

    def prefilled(self, pe: int) -> None:
        """The request's last prefill chunk is done: its sequence leaves the prefill engine."""
        self.loads[pe].left()

    def computed(self, pe: int, tokens: int) -> None:
        """A prefill batch computed ``tokens`` of prefill engine ``pe``'s work."""
        self.loads[pe].computed(tokens)

    def finished(self, request: Request, de: int) -> None:
        """The request finished decoding: its decode engine's reservation is given back."""
        total = request.total_tokens
        load = self.loads[de]
        load.seq -= 1
        load.tok -= total
        load.free_hbm += total * self._kvb

    def unplace(self, request: Request, pe: int, de: int, prefilled: bool) -> None:
        """Undo a placement (its request waits again): the decode reservation, and the
        prefill sequence unless its prefill was done (prefill tokens leave as computed)."""
        if not prefilled:
            self.loads[pe].left()
        self.finished(request, de)


def reserve_view(view: ClusterView, request: Request, decision: Decision) -> ClusterView:
    """``view`` after placing ``request`` as ``decision`` says, as :class:`Ledger` reserves.

    The prefill engine gains one sequence and the tokens it must compute, the
    decode engine one sequence, the request's whole context and the HBM for it;
    each side's node gains the hit tokens read through it; the request leaves
    the waiting queue if it was counted there; the view's prefix, if it was the
    request's, is dropped. ``view`` itself is not changed.
    """
    spec = view.spec
    engines = list(view.engines)
    pe = engines[decision.prefill_engine]
    de = engines[decision.decode_engine]
    # Built field by field: dataclasses.replace costs several times more, and a
    # service pays this between every two decisions of a batch.
    engines[pe.engine_id] = EngineView(pe.engine_id, pe.role, pe.node_id, pe.group, pe.seq + 1,
                                       pe.tok + prefill_tokens(request),
                                       pe.free_hbm_bytes, pe.cnic_busy_until_s)
    need = request.total_tokens * spec.model.kv_bytes_per_token
    engines[de.engine_id] = EngineView(de.engine_id, de.role, de.node_id, de.group, de.seq + 1,
                                       de.tok + request.total_tokens, de.free_hbm_bytes - need,
                                       de.cnic_busy_until_s)
    nodes = list(view.nodes)
    prefix = view.prefix
    stored = request.hit_tokens
    if prefix is not None and prefix.request_id == request.request_id:
        stored = load_plan(spec, request, prefix, decision.prefill_engine,
                           decision.decode_engine).storage_tokens
        prefix = None  # it was this request's: the next decision is about another one
    pe_tokens, de_tokens = split_tokens(stored, decision.decode_share, spec.block_tokens)
    for node_id, tokens in ((pe.node_id, pe_tokens), (de.node_id, de_tokens)):
        if tokens:
            n = nodes[node_id]
            nodes[node_id] = NodeView(n.node_id, n.role, n.read_q_tokens + tokens, n.snic_bytes_s,
                                      n.free_buffer_bytes, n.cache_used_bytes)
    queue = view.queue
    if queue.requests > 0:
        queue = QueueView(queue.requests - 1, max(0, queue.tokens - request.prompt_tokens))
    return ClusterView(view.time_s, spec, tuple(engines), tuple(nodes), queue, prefix)
