"""What policies see of a simulation: its views, rebuilt only where something changed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.view import ClusterView, EngineView, NodeView, Role

if TYPE_CHECKING:
    from runtime.cache import CacheTiers, PrefixCache
    from runtime.cluster import ClusterSpec
    from runtime.execution.decode import DecodeEngine
    from runtime.execution.job import Job
    from runtime.execution.prefill import PrefillEngine
    from runtime.placement import WaitingQueue
    from runtime.sim.node import NodeStorage
    from runtime.view import PrefixView

_PREFILL_ROLE, _DECODE_ROLE = Role.PREFILL, Role.DECODE


class SimulatedViews:
    """The view part of :class:`runtime.sim.Simulator` (its state is the simulator's)."""

    spec: ClusterSpec
    now: float
    nodes: list[NodeStorage]
    pes: list[PrefillEngine]
    des: list[DecodeEngine]
    waiting: WaitingQueue[Job]
    caches: CacheTiers | None
    _dram: list[PrefixCache] | None
    _kvb: int
    _npe: int
    _groups: list[int]
    _eviews: list[EngineView]
    _engines_view: tuple[EngineView, ...]
    _stale: set[int]
    _node_roles: list[Role]
    _nviews: list[NodeView | None]
    _presented: int
    _prefix: PrefixView | None

    def view(self) -> ClusterView:
        # Parts that did not change since the last view keep their objects, so
        # consumers (the encoder) can cache what they derive from them by identity.
        now = self.now
        if self._stale:
            eviews = self._eviews
            for engine_id in self._stale:
                eviews[engine_id] = self._engine_view(engine_id)
            self._stale.clear()
            self._engines_view = tuple(eviews)
        nodes = tuple([self._node_view(n, now) for n in self.nodes])
        prefix = None
        if self.caches is not None and self.waiting.items:
            job = self.waiting.items[self._presented]
            if job.prefix is None:  # computed once per request: every cache step needs it
                job.prefix = self.caches.hashes(job.request)
            prefix = self.caches.locate(job.request, job.prefix)
        self._prefix = prefix
        return ClusterView(now, self.spec, self._engines_view, nodes, self.waiting.view(),
                           prefix)

    def _node_view(self, node: NodeStorage, now: float) -> NodeView:
        read_q = node.read_queue_bytes(now) / self._kvb
        free = node.buffer_bytes - node.buffer_used
        dram = self._dram
        cached = 0.0 if dram is None else dram[node.node_id].used_tokens * self._kvb
        last = self._nviews[node.node_id]
        if (last is not None and last.read_q_tokens == read_q and last.free_buffer_bytes == free
                and last.cache_used_bytes == cached):
            return last
        fresh = NodeView(node.node_id, self._node_roles[node.node_id], read_q,
                         node.snic.bytes_s, free, cached)
        self._nviews[node.node_id] = fresh
        return fresh

    def _engine_view(self, engine_id: int) -> EngineView:
        group = self._groups[engine_id]
        if engine_id < self._npe:
            pe = self.pes[engine_id]
            busy = pe.cnic_in.busy_until
            if pe.cnic_out.busy_until > busy:  # max() without the call
                busy = pe.cnic_out.busy_until
            return EngineView(engine_id, _PREFILL_ROLE, pe.node_id, group, pe.seq, pe.tok,
                              pe.hbm_bytes - pe.hbm_used, busy)
        de = self.des[engine_id - self._npe]
        busy = de.cnic_in.busy_until
        if de.cnic_out.busy_until > busy:
            busy = de.cnic_out.busy_until
        return EngineView(engine_id, _DECODE_ROLE, de.node_id, group, de.seq, de.tok,
                          de.free_hbm, busy)

