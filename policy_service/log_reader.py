"""Reading the decision log: Parquet export, agreement with another policy, sessions.

Readers open the log read-only where the database allows it (SQLite: ``mode=ro``), so
nothing a reader does can change what it reads.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import groupby
from operator import attrgetter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from policy_service.codec import cluster_digest, view_from_pb
from policy_service.log_schema import (
    DECISIONS,
    VIEWS,
    check_schema,
    make_engine,
    schema_version,
)
from policy_service.proto import scheduler_pb2 as pb
from policy_service.replay import replay_call, same_answer, same_parts
from runtime.cluster import ClusterSpec
from runtime.decision import Decision, Defer, WaitFor
from runtime.policy import Policy
from runtime.request import Request
from runtime.workload.replay import LoggedTurn

Answer = Decision | Defer | None


# -- reading the log -------------------------------------------------------------------

def _read_only(url: str) -> sa.Engine:
    """An engine that cannot write: SQLite files open with ``mode=ro``; other databases
    rely on the reader issuing only SELECTs (give it a read-only account)."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return make_engine(url)
    path = Path(parsed.database)
    if not path.is_file():  # connecting would create an empty one
        raise ValueError(f"{url!r}: no such database file")
    target = f"file:{path.resolve()}?mode=ro"
    return sa.create_engine("sqlite://", creator=lambda: sqlite3.connect(target, uri=True))


def _open(url: str) -> sa.Engine:
    """A read-only engine on an existing decision log of this schema; ValueError if
    ``url`` holds none, or one of another schema version."""
    engine = _read_only(url)
    try:
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            if not {"views", "decisions"} <= tables:
                raise ValueError(f"{url!r} holds no decision log (tables 'views' and "
                                 f"'decisions'); its tables: {sorted(tables) or 'none'}")
            check_schema(schema_version(conn), url)
    except Exception:
        engine.dispose()
        raise
    return engine


def _clusters(conn: sa.Connection) -> list[str]:
    return sorted(conn.execute(sa.select(VIEWS.c.cluster).distinct()).scalars())


def cluster_of(url: str) -> str | None:
    """The cluster digest ("preset:hash") of the log's views; None for an empty log,
    ValueError for a log of several clusters."""
    engine = _open(url)
    try:
        with engine.connect() as conn:
            clusters = _clusters(conn)
    finally:
        engine.dispose()
    if len(clusters) > 1:
        raise ValueError(f"{url!r} holds views of several clusters: {', '.join(clusters)}")
    return clusters[0] if clusters else None


_ARROW = ((sa.Boolean, pa.bool_()), (sa.Integer, pa.int64()), (sa.Float, pa.float64()),
          (sa.LargeBinary, pa.binary()))
_VIEW_LISTS = {"engine_seq": pa.list_(pa.int64()), "engine_tok": pa.list_(pa.int64()),
               "engine_free_hbm_bytes": pa.list_(pa.float64()),
               "node_read_q_tokens": pa.list_(pa.float64())}


def _arrow_type(column: sa.Column[Any]) -> pa.DataType:
    return next((t for kind, t in _ARROW if isinstance(column.type, kind)), pa.string())


def _view_lists(snapshot: bytes) -> dict[str, list[Any]]:
    msg = pb.ClusterSnapshot.FromString(snapshot)
    return {"engine_seq": [e.seq for e in msg.engines], "engine_tok": [e.tok for e in msg.engines],
            "engine_free_hbm_bytes": [e.free_hbm_bytes for e in msg.engines],
            "node_read_q_tokens": [n.read_q_tokens for n in msg.nodes]}


def export(url: str, out: str | Path, chunk_rows: int = 50_000) -> int:
    """Write the log as Parquet, one row per decision with its view; returns the row count.

    Columns: every decision column; ``outcome_<key>`` (float, null where absent) for
    each key of any outcome; the view's ``call_id``, ``cluster``, ``view_time_s``,
    ``recorded_at``; per-engine and per-node lists decoded from the snapshot
    (``engine_seq``, ``engine_tok``, ``engine_free_hbm_bytes``, ``node_read_q_tokens``);
    and the raw ``snapshot`` bytes.
    """
    engine = _open(url)
    view_cols = [VIEWS.c.call_id, VIEWS.c.cluster, VIEWS.c.time_s.label("view_time_s"),
                 VIEWS.c.recorded_at]
    try:
        with engine.connect() as conn:
            keys = sorted({key for (text,) in conn.execute(
                sa.select(DECISIONS.c.outcome).where(DECISIONS.c.outcome.is_not(None)))
                for key in json.loads(text)})
            fields = ([pa.field(c.name, _arrow_type(c)) for c in (*DECISIONS.c, *view_cols)]
                      + [pa.field(f"outcome_{k}", pa.float64()) for k in keys]
                      + [pa.field(n, t) for n, t in _VIEW_LISTS.items()]
                      + [pa.field("snapshot", pa.binary())])
            schema = pa.schema(fields)
            query = (sa.select(*DECISIONS.c, *view_cols, VIEWS.c.snapshot)
                     .join_from(DECISIONS, VIEWS).order_by(DECISIONS.c.decision_id))
            result = conn.execution_options(yield_per=chunk_rows).execute(query)
            total = 0
            with pq.ParquetWriter(str(out), schema) as writer:
                for chunk in result.partitions():
                    writer.write_table(pa.Table.from_pylist(_export_rows(chunk, keys), schema))
                    total += len(chunk)
    finally:
        engine.dispose()
    return total


def _export_rows(chunk: Iterable[Any], keys: list[str]) -> list[dict[str, Any]]:
    rows, last_id, lists = [], None, {}
    for row in chunk:
        record = row._asdict()
        if record["view_id"] != last_id:  # a call's rows are adjacent: decode its view once
            last_id, lists = record["view_id"], _view_lists(record["snapshot"])
        outcome = json.loads(record["outcome"]) if record["outcome"] else {}
        record.update({f"outcome_{k}": outcome.get(k) for k in keys}, **lists)
        rows.append(record)
    return rows


# -- replaying the log -----------------------------------------------------------------

def _logged(row: sa.Row[Any]) -> tuple[Request, Decision | Defer]:
    request = Request(row.request_id, row.agent_id, row.turn, row.hit_tokens,
                      row.appended_tokens, row.gen_tokens, row.arrival_s)
    if row.defer:
        return request, Defer(row.reason, WaitFor(row.wait_for or 0))
    return request, Decision(row.prefill_engine, row.decode_engine, row.decode_share, row.reason)


def _rate(agreed: int, n: int) -> float | None:
    return agreed / n if n else None


def agree(url: str, policy: Policy, spec: ClusterSpec) -> dict[str, Any]:
    """Replay every logged call with ``policy``: how often it answers what was logged.

    Each call's view is decoded for ``spec`` (ValueError, naming both digests, if the
    log is of another cluster); its decisions are asked in ``batch_index`` order, each
    on the view after the *logged* decisions before it (as the service reserved them).
    Agreement: both defer, or the same engines and a decode share within 1e-9.
    ``by_part`` compares each part over the pairs where both placed the request.
    Rates are None where nothing was compared.
    """
    digest = cluster_digest(spec)
    versions: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # decisions, agreed
    parts = [0, 0, 0, 0]  # compared, same prefill, same decode, same share
    engine = _open(url)
    try:
        with engine.connect() as conn:
            other = [c for c in _clusters(conn) if c != digest]
            if other:
                raise ValueError(f"{url!r} logs views of cluster(s) {', '.join(other)}; "
                                 f"the replay's cluster is {digest!r}")
            query = (sa.select(DECISIONS, VIEWS.c.snapshot).join_from(DECISIONS, VIEWS)
                     .order_by(DECISIONS.c.view_id, DECISIONS.c.batch_index))
            rows = conn.execution_options(yield_per=10_000).execute(query)
            for version, mine, logged in _replay(rows, policy, spec):
                versions[version][0] += 1
                versions[version][1] += _same(mine, logged, parts)
    finally:
        engine.dispose()
    total, agreed = sum(d for d, _ in versions.values()), sum(a for _, a in versions.values())
    n = parts[0]
    return {"decisions": total, "agreed": agreed, "rate": _rate(agreed, total),
            "by_version": {v: {"decisions": d, "agreed": a, "rate": _rate(a, d)}
                           for v, (d, a) in versions.items()},
            "by_part": {"prefill": _rate(parts[1], n), "decode": _rate(parts[2], n),
                        "share": _rate(parts[3], n)}}


def _replay(rows: Iterable[sa.Row[Any]], policy: Policy,
            spec: ClusterSpec) -> Iterator[tuple[str, Answer, Decision | Defer]]:
    """(version, the policy's answer, the logged answer) for each row, rows of a call
    in order, each call starting from its logged view."""
    for _, group in groupby(rows, key=attrgetter("view_id")):
        call = list(group)
        view = view_from_pb(pb.ClusterSnapshot.FromString(call[0].snapshot), spec)
        logged = [_logged(row) for row in call]
        mine = replay_call(view, logged, policy.decide)
        for row, (_, answer), candidate in zip(call, logged, mine, strict=True):
            yield row.policy_version, candidate, answer


def _same(mine: Answer, logged: Decision | Defer, parts: list[int]) -> bool:
    """Whether ``mine`` agrees with ``logged``; counts the parts where both placed."""
    same = same_parts(mine, logged)
    if same is not None:
        parts[0] += 1
        for i, s in enumerate(same, 1):
            parts[i] += s
    return same_answer(mine, logged)


# -- sessions, for replay ---------------------------------------------------------------

@dataclass(frozen=True)
class LoggedTraffic:
    """The placed requests of a log (or of its last ``since_s`` seconds), as turns."""

    url: str
    cluster: str  # the views' cluster digest
    turns: list[LoggedTurn]
    decisions: int  # decisions rows read (defers included)
    first_at: float  # decided_at (time.time()) of the first and last row read
    last_at: float


def logged_traffic(url: str, since_s: float | None = None,
                   now: float | None = None) -> LoggedTraffic:
    """Each request's latest placed decision, with its outcome, from the log at ``url``
    (only decisions made in the last ``since_s`` seconds before ``now``, default the
    present, when given). ValueError for an empty log or window, or one of several
    clusters. Read-only."""
    if since_s is not None and not (math.isfinite(since_s) and since_s > 0):
        raise ValueError(f"--since must be a positive duration, got {since_s!r} s")
    cutoff = None if since_s is None else (time.time() if now is None else now) - since_s
    engine = _open(url)
    try:
        with engine.connect() as conn:
            clusters = _clusters(conn)
            if len(clusters) > 1:
                raise ValueError(f"{url!r} holds views of several clusters: "
                                 f"{', '.join(clusters)}; replay one cluster's log")
            rows = conn.execution_options(yield_per=10_000).execute(_traffic_query(cutoff))
            latest, count, first, last = _latest_placed(rows)
    finally:
        engine.dispose()
    if not count:
        window = "" if since_s is None else f" in the last {since_s:g} s"
        raise ValueError(f"{url!r} holds no decisions{window}: nothing to replay")
    if not latest:
        raise ValueError(f"{url!r}: every one of its {count} decisions deferred; "
                         "no request was placed")
    turns = [LoggedTurn(r.session_id, r.arrival_s, r.hit_tokens, r.appended_tokens,
                        r.gen_tokens, r.slo_class, r.latency_s) for r in latest.values()]
    return LoggedTraffic(url, clusters[0], turns, count, first, last)


def _latest_placed(rows: Iterable[Any]) -> tuple[dict[tuple[str, int], Any], int, float, float]:
    """Each request's last placed row (rows in decision order), the rows read, and the
    first and last ``decided_at``."""
    latest: dict[tuple[str, int], Any] = {}
    count, first, last = 0, math.nan, math.nan
    for row in rows:
        count += 1
        if count == 1:
            first = row.decided_at
        last = row.decided_at
        if not row.defer:
            latest[(row.client_id, row.request_id)] = row
    return latest, count, first, last


def _traffic_query(cutoff: float | None) -> sa.Select[Any]:
    d = DECISIONS.c
    query = sa.select(d.client_id, d.request_id, d.defer, d.session_id, d.arrival_s,
                      d.hit_tokens, d.appended_tokens, d.gen_tokens, d.slo_class, d.latency_s,
                      d.decided_at).order_by(d.decision_id)
    return query if cutoff is None else query.where(d.decided_at >= cutoff)
