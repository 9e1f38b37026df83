"""Run metrics, computed once at the end from the recorder and the links.

Definitions (also in the README):
- ``jct_s``: makespan, first arrival to last completion (the paper's offline JCT);
- ``jct_mean_s``: mean over agents of (end of its last turn - its first arrival);
- ``latency_mean_s``: mean request time in system (finish - arrival);
- ``throughput_tok_s``: (prompt tokens + generated tokens) / makespan;
- ``ttft_*``: first token (end of prefill) - arrival; ``tpot_*``: (finish - first
  token) / (generated tokens - 1), over requests that generate more than one token;
- ``slo_attainment``: share of requests within their latency class's targets (TTFT <=
  slo_ttft_s and TPOT <= slo_tpot_s for ``interactive``; ``batch`` has none);
- ``classes``: per latency class with requests, its ``requests``, ``ttft_mean_s``,
  ``ttft_p99_s``, ``tpot_mean_s`` and ``slo_attainment`` (null for ``batch``);
- ``hit_bytes_by_source``: hit KV bytes by where they came from (:data:`SOURCES`: the
  prefill engine's HBM cache, its node's DRAM, another node's DRAM, storage by the PE
  path, storage by the DE path); they sum to ``hit_bytes``. ``storage_bytes_read``: the
  two storage sources;
- ``snic_util``/``cnic_util``: bytes carried / (bandwidth x makespan), per SNIC (reads)
  and per engine CNIC (KV lane, both directions averaged);
- ``snic_max_over_avg``: mean over 1-second windows with traffic of (busiest SNIC's
  read bytes / mean SNIC read bytes);
- ``snic_max_over_avg_steady``: the same over the windows of the middle 80% of the run
  (the first and last tenths, while queues fill and drain, left out).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from runtime.execution.link import Link
from runtime.slo import BATCH, CLASSES, INTERACTIVE

if TYPE_CHECKING:
    from runtime.cluster import ClusterSpec
    from runtime.execution.recorder import Recorder


def window_bytes(link: Link, edges: np.ndarray) -> np.ndarray:
    """Bytes the link carried in each window [edges[k], edges[k+1])."""
    if not link.sizes:
        return np.zeros(len(edges) - 1)
    starts = np.asarray(link.starts)
    ends = np.asarray(link.ends)
    rate = np.asarray(link.sizes) / np.maximum(ends - starts, 1e-300)
    return np.diff(_cumulative(starts, rate, edges) - _cumulative(ends, rate, edges))


def _cumulative(points: np.ndarray, rate: np.ndarray, t: np.ndarray) -> np.ndarray:
    """sum_i rate_i * max(0, t - points_i), evaluated at each t."""
    order = np.argsort(points, kind="stable")
    p, r = points[order], rate[order]
    cr = np.concatenate(([0.0], np.cumsum(r)))
    crp = np.concatenate(([0.0], np.cumsum(r * p)))
    k = np.searchsorted(p, t, side="right")
    return t * cr[k] - crp[k]


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else 0.0


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else 0.0


def latencies(arrival: np.ndarray, first: np.ndarray, finish: np.ndarray,
              gen: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TTFT per request, TPOT per request that generates more than one token, and the
    mask of those requests (the definitions of :class:`~runtime.execution.job.Job`)."""
    multi = gen > 1
    return first - arrival, (finish[multi] - first[multi]) / (gen[multi] - 1), multi


SOURCES = ("hbm", "dram_local", "dram_peer", "storage_pe_path", "storage_de_path")


def summarize(rec: Recorder, spec: ClusterSpec, snics: list[Link],
              cnics: list[tuple[Link, Link]], hit_bytes: float, wall_s: float,
              hit_by_source: list[float] | None = None) -> dict[str, Any]:
    """The run's metrics from its finished requests and its links (either execution).
    ``hit_by_source`` in :data:`SOURCES` order; ``None``: every hit read from storage
    (what the SNICs carried)."""
    n = len(rec.finish)
    arrival = np.asarray(rec.arrival)
    first = np.asarray(rec.first_token)
    finish = np.asarray(rec.finish)
    gen = np.asarray(rec.gen)
    prompt = np.asarray(rec.prompt)
    t0 = float(arrival.min()) if n else 0.0
    t1 = float(finish.max()) if n else 0.0
    span = max(t1 - t0, 1e-12)
    ttft, tpot, multi = latencies(arrival, first, finish, gen)
    tpot_ok = np.ones(n, dtype=bool)
    tpot_ok[multi] = tpot <= spec.slo_tpot_s
    classes = np.asarray(rec.slo_class) if n else np.zeros(0, dtype=str)
    within = (ttft <= spec.slo_ttft_s) & tpot_ok
    within |= classes == BATCH  # no target
    jct = np.asarray([rec.agent_last[a] - rec.agent_first[a] for a in rec.agent_last])
    snic_util = [link.total_bytes / (link.bytes_s * span) for link in snics]
    cnic_util = [(i.total_bytes + o.total_bytes) / (2 * i.bytes_s * span) for i, o in cnics]
    read_pe = sum(link.total_bytes for link in snics[: spec.prefill_nodes])
    read_de = sum(link.total_bytes for link in snics[spec.prefill_nodes:])
    by_source = (dict(zip(SOURCES, hit_by_source, strict=True)) if hit_by_source is not None
                 else {**dict.fromkeys(SOURCES[:3], 0.0), SOURCES[3]: read_pe, SOURCES[4]: read_de})
    return {
        "requests": n,
        "jct_s": t1 - t0,
        "jct_mean_s": _mean(jct),
        "latency_mean_s": _mean(finish - arrival),
        "throughput_tok_s": float(prompt.sum() + gen.sum()) / span,
        "ttft_mean_s": _mean(ttft),
        "ttft_p50_s": _pct(ttft, 50),
        "ttft_p99_s": _pct(ttft, 99),
        "tpot_mean_s": _mean(tpot),
        "tpot_p99_s": _pct(tpot, 99),
        "slo_attainment": float(np.mean(within)) if n else 0.0,
        "classes": _per_class(classes, ttft, tpot, multi, within),
        "snic_util": snic_util,
        "snic_util_mean": float(np.mean(snic_util)),
        "cnic_util": cnic_util,
        "cnic_util_mean": float(np.mean(cnic_util)),
        "cnic_util_max": float(np.max(cnic_util)),
        "snic_max_over_avg": snic_max_over_avg(snics, t0, t1),
        "snic_max_over_avg_steady": snic_max_over_avg(snics, t0 + 0.1 * span, t1 - 0.1 * span),
        "hit_bytes": hit_bytes,
        "hit_bytes_by_source": by_source,
        "storage_bytes_read": by_source[SOURCES[3]] + by_source[SOURCES[4]],
        "read_bytes_pe_side": read_pe,
        "read_bytes_de_side": read_de,
        "wall_s": wall_s,
        "sim_requests_per_s": n / wall_s if wall_s > 0 else 0.0,
    }


def _per_class(classes: np.ndarray, ttft: np.ndarray, tpot: np.ndarray, multi: np.ndarray,
               within: np.ndarray) -> dict[str, dict[str, Any]]:
    """The latency metrics of each class that has requests."""
    out: dict[str, dict[str, Any]] = {}
    for name in CLASSES:
        mine = classes == name
        if not mine.any():
            continue
        mine_ttft, mine_tpot = ttft[mine], tpot[mine[multi]]
        out[name] = {
            "requests": int(mine.sum()),
            "ttft_mean_s": _mean(mine_ttft),
            "ttft_p99_s": _pct(mine_ttft, 99),
            "tpot_mean_s": _mean(mine_tpot),
            "slo_attainment": float(np.mean(within[mine])) if name == INTERACTIVE else None,
        }
    return out


def snic_max_over_avg(snics: list[Link], t0: float, t1: float, window_s: float = 1.0) -> float:
    edges = np.arange(np.floor(t0), np.ceil(t1) + window_s, window_s)
    if len(edges) < 2:
        return 1.0
    per_link = np.vstack([window_bytes(link, edges) for link in snics])
    mean = per_link.mean(axis=0)
    busy = mean > 0
    if not busy.any():
        return 1.0
    return float(np.mean(per_link.max(axis=0)[busy] / mean[busy]))
