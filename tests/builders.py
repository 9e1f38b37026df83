"""Test builders: small clusters, views and requests without presets.

``make_spec`` builds a :class:`ClusterSpec` from keyword overrides routed to the
cluster, node or model by field name; ``make_view`` builds a :class:`ClusterView`
for a spec from per-engine and per-node values (a full sequence or a sparse
``{index: value}`` dict over defaults); ``make_request`` builds a request.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from runtime.cluster import ClusterSpec
from runtime.model import ModelSpec
from runtime.node import NodeSpec
from runtime.request import Request
from runtime.view import ClusterView, EngineView, NodeView, QueueView, Role

# A small model with round numbers: 1,000 KV bytes per token, 1 GFLOP per new
# token, no attention cost, half of peak FLOP/s in every batch.
TEST_MODEL = ModelSpec(
    name="test-model", layers=4, kv_bytes_per_token=1_000, dense_flops_per_token=1e9,
    attn_flops_per_ctx_token=0.0, prefill_efficiency=((1.0, 0.5),), decode_base_s=0.03,
)

_CLUSTER_FIELDS = {f.name for f in dataclasses.fields(ClusterSpec)} - {"node", "model"}
_NODE_FIELDS = {f.name for f in dataclasses.fields(NodeSpec)}
_MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelSpec) if f.init} - {"name"}

PerItem = Sequence[float] | Mapping[int, float] | None


def make_spec(prefill_nodes: int = 1, decode_nodes: int = 1, gpus: int | None = None, *,
              node: NodeSpec | None = None, model: ModelSpec | None = None,
              name: str = "test", **overrides: Any) -> ClusterSpec:
    """A cluster spec; every other keyword goes to the cluster, node or model field it names.

    ``make_spec(2, 4, gpus=1, snic_gb_s=10, kv_bytes_per_token=500, decode_max_batch=8)``
    sets a node field, a model field and a cluster field. ``node``/``model``
    replace the bases the overrides apply to (defaults: ``NodeSpec()``,
    :data:`TEST_MODEL`); ``gpus`` defaults to the base node's, or 2 without one.
    """
    cluster_kw = {k: v for k, v in overrides.items() if k in _CLUSTER_FIELDS}
    node_kw = {k: v for k, v in overrides.items() if k in _NODE_FIELDS}
    model_kw = {k: v for k, v in overrides.items() if k in _MODEL_FIELDS}
    unknown = set(overrides) - set(cluster_kw) - set(node_kw) - set(model_kw)
    if unknown:
        raise TypeError(f"make_spec: unknown field(s) {sorted(unknown)}")
    base_node = node if node is not None else NodeSpec(gpus=2)
    if gpus is not None:
        node_kw["gpus"] = gpus
    return ClusterSpec(
        name=name, prefill_nodes=prefill_nodes, decode_nodes=decode_nodes,
        node=dataclasses.replace(base_node, **node_kw),
        model=dataclasses.replace(model if model is not None else TEST_MODEL, **model_kw),
        **cluster_kw,
    )


def _per_item(values: PerItem, n: int, default: Sequence[float], what: str) -> list[float]:
    out = list(default)
    if values is None:
        return out
    if isinstance(values, Mapping):
        for i, v in values.items():
            if not 0 <= i < n:
                raise ValueError(f"make_view: {what} index {i} out of range 0..{n - 1}")
            out[i] = v
        return out
    if len(values) != n:
        raise ValueError(f"make_view: {what} needs {n} values, got {len(values)}")
    return list(values)


def make_view(spec: ClusterSpec, *, seq: PerItem = None, tok: PerItem = None,
              free_hbm: PerItem = None, read_q: PerItem = None, snic_bytes_s: PerItem = None,
              free_buffer: PerItem = None, cnic_busy_until_s: PerItem = None,
              queue: QueueView | tuple[int, int] = (0, 0), time_s: float = 0.0) -> ClusterView:
    """A view of ``spec``: engines (prefill first) and nodes with the given values.

    Per-engine ``seq``, ``tok``, ``free_hbm`` (bytes), ``cnic_busy_until_s`` and
    per-node ``read_q`` (tokens), ``snic_bytes_s``, ``free_buffer`` (bytes) are
    each a full sequence or a ``{index: value}`` dict. Defaults: idle engines
    with their role's whole HBM free, empty read queues, the spec's SNIC and
    host buffer. ``queue`` is ``(requests, tokens)`` or a :class:`QueueView`.
    """
    n_eng, n_node = spec.engines, spec.nodes
    hbm_default = [spec.node.pe_hbm_kv_bytes if spec.role_of(e) is Role.PREFILL
                   else spec.node.de_hbm_kv_bytes for e in range(n_eng)]
    seqs = _per_item(seq, n_eng, [0] * n_eng, "seq")
    toks = _per_item(tok, n_eng, [0] * n_eng, "tok")
    hbms = _per_item(free_hbm, n_eng, hbm_default, "free_hbm")
    busy = _per_item(cnic_busy_until_s, n_eng, [0.0] * n_eng, "cnic_busy_until_s")
    engines = tuple(
        EngineView(engine_id=e, role=spec.role_of(e), node_id=spec.node_of(e),
                   group=spec.group_of(e), seq=int(seqs[e]), tok=int(toks[e]),
                   free_hbm_bytes=float(hbms[e]), cnic_busy_until_s=float(busy[e]))
        for e in range(n_eng))
    queues = _per_item(read_q, n_node, [0.0] * n_node, "read_q")
    snics = _per_item(snic_bytes_s, n_node, [spec.node.snic_bytes_s] * n_node, "snic_bytes_s")
    buffers = _per_item(free_buffer, n_node, [spec.node.host_buffer_bytes] * n_node,
                        "free_buffer")
    nodes = tuple(
        NodeView(node_id=n, role=spec.role_of_node(n), read_q_tokens=float(queues[n]),
                 snic_bytes_s=float(snics[n]), free_buffer_bytes=float(buffers[n]))
        for n in range(n_node))
    if not isinstance(queue, QueueView):
        queue = QueueView(requests=queue[0], tokens=queue[1])
    return ClusterView(time_s=time_s, spec=spec, engines=engines, nodes=nodes, queue=queue)


def make_request(hit: int = 1_000, appended: int = 100, gen: int = 10, *,
                 request_id: int = 0, agent_id: int = 0, turn: int = 0,
                 arrival_s: float = 0.0) -> Request:
    """A request with ``hit`` stored tokens, ``appended`` new tokens and ``gen`` to generate."""
    return Request(request_id=request_id, agent_id=agent_id, turn=turn, hit_tokens=hit,
                   appended_tokens=appended, gen_tokens=gen, arrival_s=arrival_s)
