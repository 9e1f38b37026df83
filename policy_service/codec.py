"""Messages ↔ the shared types, with every field checked.

Decoding raises :class:`InvalidMessage` (the servicer answers INVALID_ARGUMENT
with its text) naming the field and what is wrong with it; it never lets a
malformed value reach a policy.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache

from policy_service.proto import scheduler_pb2 as pb
from runtime.cluster import ClusterSpec
from runtime.decision import Decision, Defer, WaitFor
from runtime.request import Request
from runtime.slo import BATCH, INTERACTIVE
from runtime.view import ClusterView, EngineView, NodeView, PrefixView, QueueView, Role

ROLE_TO_PB = {Role.PREFILL: pb.PREFILL, Role.DECODE: pb.DECODE}
ROLE_FROM_PB = {v: k for k, v in ROLE_TO_PB.items()}
WAIT_TO_PB = {WaitFor.ANY: pb.WAIT_ANY, WaitFor.PREFILL: pb.WAIT_PREFILL,
              WaitFor.DECODE: pb.WAIT_DECODE}
WAIT_FROM_PB = {v: k for k, v in WAIT_TO_PB.items()}
_MAX_TOKENS = 1 << 40  # beyond any context; keeps arithmetic on tokens exact in floats
_SLO_CLASSES = {"": INTERACTIVE, INTERACTIVE: INTERACTIVE, BATCH: BATCH}  # interned names


class InvalidMessage(ValueError):
    """A message the service refuses; its text names the field."""


@lru_cache(maxsize=64)
def cluster_digest(spec: ClusterSpec) -> str:
    """A short name for ``spec``'s every value: a snapshot carries it, so a service
    serving another cluster refuses the snapshot instead of misreading it."""
    return f"{spec.name}:{hashlib.sha256(repr(spec).encode()).hexdigest()[:16]}"


# -- requests ---------------------------------------------------------------------

def request_to_pb(request: Request, prefix: PrefixView | None = None) -> pb.Request:
    """``request`` as sent; ``prefix``: where the caller knows its prefix sits."""
    msg = pb.Request(request_id=request.request_id, agent_id=request.agent_id,
                     turn=request.turn, hit_tokens=request.hit_tokens,
                     appended_tokens=request.appended_tokens, gen_tokens=request.gen_tokens,
                     arrival_s=request.arrival_s, block_hashes=request.block_hashes or (),
                     slo_class=request.slo_class)
    if prefix is not None:
        msg.prefix.CopyFrom(prefix_to_pb(prefix))
    return msg


def request_from_pb(msg: pb.Request, where: str = "request") -> Request:
    hit, appended, gen, arrival = (msg.hit_tokens, msg.appended_tokens, msg.gen_tokens,
                                   msg.arrival_s)
    if not (0 <= hit <= _MAX_TOKENS and 0 <= appended <= _MAX_TOKENS
            and 0 <= gen <= _MAX_TOKENS):
        for name in ("hit_tokens", "appended_tokens", "gen_tokens"):
            value = getattr(msg, name)
            if not 0 <= value <= _MAX_TOKENS:
                raise InvalidMessage(f"{where}.{name} must lie in [0, 2^40], got {value}")
    if not 0.0 <= arrival < math.inf:
        _finite(arrival, f"{where}.arrival_s", low=0.0)
    try:
        return Request(msg.request_id, msg.agent_id, msg.turn, hit, appended, gen, arrival,
                       tuple(msg.block_hashes) or None,
                       _SLO_CLASSES.get(msg.slo_class, msg.slo_class))
    except ValueError as err:
        raise InvalidMessage(f"{where}: {err}") from None


def prefix_to_pb(prefix: PrefixView) -> pb.PrefixLocations:
    return pb.PrefixLocations(block_tokens=prefix.block_tokens, dram_blocks=prefix.dram_blocks,
                              hbm_blocks=prefix.hbm_blocks)


def prefix_from_pb(msg: pb.Request, spec: ClusterSpec, where: str = "request"
                   ) -> PrefixView | None:
    """Where ``msg`` says its prefix sits (None when it does not say), checked against
    ``spec``: a count per node and per prefill engine, none negative."""
    if not msg.HasField("prefix"):
        return None
    p = msg.prefix
    if p.block_tokens <= 0:
        raise InvalidMessage(f"{where}.prefix.block_tokens must be > 0, got {p.block_tokens}")
    if len(p.dram_blocks) != spec.nodes or len(p.hbm_blocks) != spec.prefill_engines:
        raise InvalidMessage(f"{where}.prefix has {len(p.dram_blocks)} DRAM and "
                             f"{len(p.hbm_blocks)} HBM counts; cluster {spec.name!r} has "
                             f"{spec.nodes} nodes and {spec.prefill_engines} prefill engines")
    if min((*p.dram_blocks, *p.hbm_blocks), default=0) < 0:
        raise InvalidMessage(f"{where}.prefix: block counts must be >= 0")
    return PrefixView(msg.request_id, p.block_tokens, tuple(p.dram_blocks), tuple(p.hbm_blocks))


# -- views ------------------------------------------------------------------------

def view_to_pb(view: ClusterView) -> pb.ClusterSnapshot:
    engines = [pb.EngineState(engine_id=e.engine_id, role=ROLE_TO_PB[e.role], node_id=e.node_id,
                              group=e.group, seq=e.seq, tok=e.tok,
                              free_hbm_bytes=e.free_hbm_bytes,
                              cnic_busy_until_s=e.cnic_busy_until_s) for e in view.engines]
    nodes = [pb.NodeState(node_id=n.node_id, role=ROLE_TO_PB[n.role],
                          read_q_tokens=n.read_q_tokens, snic_bytes_s=n.snic_bytes_s,
                          free_buffer_bytes=n.free_buffer_bytes,
                          cache_used_bytes=n.cache_used_bytes) for n in view.nodes]
    return pb.ClusterSnapshot(cluster_digest=cluster_digest(view.spec), time_s=view.time_s,
                              engines=engines, nodes=nodes, queue_requests=view.queue.requests,
                              queue_tokens=view.queue.tokens)


def view_from_pb(msg: pb.ClusterSnapshot, spec: ClusterSpec) -> ClusterView:
    """The view ``msg`` describes, which must be of ``spec``'s cluster."""
    layout = _layout(spec)
    if msg.cluster_digest != layout.digest:
        raise InvalidMessage(f"view.cluster_digest {msg.cluster_digest!r} is not this service's "
                             f"cluster {layout.digest!r}: the snapshot describes another cluster")
    if len(msg.engines) != spec.engines or len(msg.nodes) != spec.nodes:
        raise InvalidMessage(f"view has {len(msg.engines)} engines and {len(msg.nodes)} nodes; "
                             f"cluster {spec.name!r} has {spec.engines} and {spec.nodes}")
    _finite(msg.time_s, "view.time_s", low=0.0)
    if msg.queue_requests < 0 or msg.queue_tokens < 0:
        raise InvalidMessage("view.queue_requests and view.queue_tokens must be >= 0")
    queue = QueueView(msg.queue_requests, msg.queue_tokens)
    fast = _fast_view(msg, spec, layout, queue)
    if fast is not None:
        return fast
    # Something is off: the field-by-field path finds it and names it.
    engines = tuple(_engine(e, i, spec) for i, e in enumerate(msg.engines))
    nodes = tuple(_node(n, i, spec) for i, n in enumerate(msg.nodes))
    return ClusterView(msg.time_s, spec, engines, nodes, queue)


_EngineRow = tuple[int, int, int, int, int, float, float]  # as listed in EngineState


@dataclass(frozen=True)
class _Layout:
    """What a valid snapshot of one cluster must say about who is who."""

    digest: str
    engine_keys: list[tuple[int, int, int]]  # (engine_id, role, node_id) per engine
    engine_static: list[tuple[int, Role, int, int]]  # (id, role, node, group)
    node_keys: list[tuple[int, int]]  # (node_id, role)
    node_roles: list[Role]
    # The last view decoded per engine, with the fields it was decoded from. A
    # cluster's successive snapshots differ in an engine or two, and comparing a
    # row costs a fraction of checking it and building its view; a row equal to a
    # checked one is valid, and views are immutable, so the view is shared. (One
    # entry per engine: a client cycling through old snapshots gains nothing.)
    recent: list[tuple[_EngineRow, EngineView] | None]


@lru_cache(maxsize=64)
def _layout(spec: ClusterSpec) -> _Layout:
    engines = range(spec.engines)
    return _Layout(
        cluster_digest(spec),
        [(e, ROLE_TO_PB[spec.role_of(e)], spec.node_of(e)) for e in engines],
        [(e, spec.role_of(e), spec.node_of(e), spec.group_of(e)) for e in engines],
        [(n, ROLE_TO_PB[spec.role_of_node(n)]) for n in range(spec.nodes)],
        [spec.role_of_node(n) for n in range(spec.nodes)],
        [None] * spec.engines)


def _fast_view(msg: pb.ClusterSnapshot, spec: ClusterSpec, layout: _Layout,
               queue: QueueView) -> ClusterView | None:
    """The view, checked engine by engine against the layout (every decision pays for
    this); None if any check fails, so the caller can find which field is wrong."""
    recent, keys, static = layout.recent, layout.engine_keys, layout.engine_static
    engines: list[EngineView] = []
    for i, e in enumerate(msg.engines):
        row = (e.engine_id, e.role, e.node_id, e.seq, e.tok, e.free_hbm_bytes,
               e.cnic_busy_until_s)
        seen = recent[i]
        if seen is not None and seen[0] == row:  # NaN never compares equal: rechecked
            engines.append(seen[1])
            continue
        _, _, _, seq, tok, free, busy = row
        if (row[:3] != keys[i] or not (0 <= seq <= _MAX_TOKENS and 0 <= tok <= _MAX_TOKENS)
                or not (math.isfinite(free) and 0.0 <= busy < math.inf)):
            return None
        engine_id, role, node, group = static[i]
        view = EngineView(engine_id, role, node, group, seq, tok, free, busy)
        recent[i] = (row, view)  # one assignment: a thread reading it sees a whole pair
        engines.append(view)
    nodes = [(n.node_id, n.role, n.read_q_tokens, n.snic_bytes_s, n.free_buffer_bytes,
              n.cache_used_bytes) for n in msg.nodes]
    if [r[:2] for r in nodes] != layout.node_keys or not all(
            0.0 <= r[2] < math.inf and 0.0 <= r[3] < math.inf and math.isfinite(r[4])
            and 0.0 <= r[5] < math.inf for r in nodes):
        return None
    node_views = tuple([NodeView(r[0], role, r[2], r[3], r[4], r[5])
                        for role, r in zip(layout.node_roles, nodes, strict=True)])
    return ClusterView(msg.time_s, spec, tuple(engines), node_views, queue)


def _engine(e: pb.EngineState, index: int, spec: ClusterSpec) -> EngineView:
    where = f"view.engines[{index}]"
    if e.engine_id != index:
        raise InvalidMessage(f"{where}.engine_id is {e.engine_id}; engines must be listed in "
                             f"order 0..{spec.engines - 1}")
    role = check_engine_identity(e, index, spec, where)
    if not (0 <= e.seq <= _MAX_TOKENS and 0 <= e.tok <= _MAX_TOKENS):
        raise InvalidMessage(f"{where}: seq and tok must be >= 0, got {e.seq} and {e.tok}")
    _finite(e.free_hbm_bytes, f"{where}.free_hbm_bytes")
    _finite(e.cnic_busy_until_s, f"{where}.cnic_busy_until_s", low=0.0)
    return EngineView(index, role, e.node_id, spec.group_of(index), e.seq, e.tok,
                      e.free_hbm_bytes, e.cnic_busy_until_s)


def check_engine_identity(msg: pb.EngineState | pb.EngineReport, engine_id: int,
                          spec: ClusterSpec, where: str) -> Role:
    """``engine_id``'s role, after checking ``msg`` gives that role and node."""
    role = spec.role_of(engine_id)
    if ROLE_FROM_PB.get(msg.role) is not role or msg.node_id != spec.node_of(engine_id):
        raise InvalidMessage(f"{where}: engine {engine_id} is a {role} engine on node "
                             f"{spec.node_of(engine_id)}, not role {msg.role} on node "
                             f"{msg.node_id}")
    return role


def _node(n: pb.NodeState, index: int, spec: ClusterSpec) -> NodeView:
    where = f"view.nodes[{index}]"
    role = spec.role_of_node(index)
    if n.node_id != index or ROLE_FROM_PB.get(n.role) is not role:
        raise InvalidMessage(f"{where}: node {index} is a {role} node; got node_id {n.node_id} "
                             f"role {n.role}")
    _finite(n.read_q_tokens, f"{where}.read_q_tokens", low=0.0)
    _finite(n.snic_bytes_s, f"{where}.snic_bytes_s", low=0.0)
    _finite(n.free_buffer_bytes, f"{where}.free_buffer_bytes")
    _finite(n.cache_used_bytes, f"{where}.cache_used_bytes", low=0.0)
    return NodeView(index, role, n.read_q_tokens, n.snic_bytes_s, n.free_buffer_bytes,
                    n.cache_used_bytes)


def _finite(value: float, where: str, low: float | None = None) -> None:
    if not math.isfinite(value):
        raise InvalidMessage(f"{where} must be a finite number, got {value}")
    if low is not None and value < low:
        raise InvalidMessage(f"{where} must be >= {low:g}, got {value}")


# -- decisions --------------------------------------------------------------------

def decision_to_pb(answer: Decision | Defer | None, request_id: int,
                   version: str, prefix: PrefixView | None = None) -> pb.Decision:
    """The answer as sent; ``prefix``: where the policy was told the prefix sits."""
    if isinstance(answer, Decision):
        msg = pb.Decision(prefill_engine=answer.prefill_engine,
                          decode_engine=answer.decode_engine, decode_share=answer.decode_share,
                          reason=answer.reason, policy_version=version, request_id=request_id)
    else:
        defer = answer if answer is not None else Defer()
        msg = pb.Decision(defer=True, wait_for=WAIT_TO_PB[defer.wait_for], reason=defer.reason,
                          policy_version=version, request_id=request_id)
    if prefix is not None:
        msg.prefix.CopyFrom(prefix_to_pb(prefix))
    return msg


def decision_from_pb(msg: pb.Decision) -> Decision | Defer:
    if msg.defer:
        return Defer(msg.reason, WAIT_FROM_PB.get(msg.wait_for, WaitFor.ANY))
    return Decision(msg.prefill_engine, msg.decode_engine, msg.decode_share, msg.reason)


def path_of(answer: Decision | Defer | None) -> str:
    """``pe``, ``de``, ``split`` or ``defer``: the metrics' and the log's path label."""
    if not isinstance(answer, Decision):
        return "defer"
    share = answer.decode_share
    return "pe" if share == 0.0 else "de" if share == 1.0 else "split"
