"""The service's decision log: every call's view and decisions, and their outcomes, in SQL.

Contract:

* ``record_call`` and ``record_outcome`` never touch the database: they append to
  an in-memory queue and return (microseconds; they sit on the request path).
* One writer thread commits what is queued, in recording order, every
  ``flush_interval_s`` (sooner once ``max_rows_per_write`` rows wait), one
  transaction per write of about ``max_rows_per_write`` rows. A call's view and
  its decisions commit together; an outcome commits after every decision
  recorded before it.
* Loss on a hard kill of the process: at most the rows recorded in the last
  ``flush_interval_s``, plus those of a write in progress and those queued behind
  it. While the database refuses writes, everything recorded since it began
  refusing is queued (and lost on a kill); each refused write is logged, counted
  in ``stats.errors`` and retried after ``flush_interval_s``; beyond
  ``max_pending`` queued rows, the oldest are dropped and counted in
  ``stats.dropped``. (SQLite runs in WAL mode with ``synchronous=NORMAL``: a
  commit survives a process kill, though an OS crash may undo the last commits.)
* ``flush`` blocks until everything recorded before it is committed (or
  dropped); ``close`` flushes, then stops the writer.

``export`` writes the log as Parquet; ``agree`` replays it against another policy.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby
from operator import attrgetter
from pathlib import Path
from typing import Any, NamedTuple, cast

import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from policy_service.codec import cluster_digest, path_of, view_from_pb
from policy_service.proto import scheduler_pb2 as pb
from runtime.cluster import ClusterSpec
from runtime.decision import Decision, Defer, WaitFor
from runtime.policy import Policy
from runtime.request import Request
from runtime.reservation import reserve

log = logging.getLogger(__name__)
Answer = Decision | Defer | None

META = sa.MetaData()
VIEWS = sa.Table(
    "views", META,
    sa.Column("view_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("call_id", sa.String(64), nullable=False, unique=True),
    sa.Column("cluster", sa.Text, nullable=False),
    sa.Column("time_s", sa.Float, nullable=False),
    sa.Column("snapshot", sa.LargeBinary, nullable=False),  # a serialized pb.ClusterSnapshot
    sa.Column("recorded_at", sa.Float, nullable=False))
DECISIONS = sa.Table(
    "decisions", META,
    sa.Column("decision_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("view_id", sa.Integer, sa.ForeignKey("views.view_id"), nullable=False),
    sa.Column("batch_index", sa.Integer, nullable=False),
    sa.Column("client_id", sa.Text, nullable=False),
    *(sa.Column(name, sa.BigInteger, nullable=False) for name in (
        "request_id", "agent_id", "turn", "hit_tokens", "appended_tokens", "gen_tokens")),
    sa.Column("arrival_s", sa.Float, nullable=False),
    sa.Column("policy_spec", sa.Text, nullable=False),
    sa.Column("policy_version", sa.Text, nullable=False),
    sa.Column("defer", sa.Boolean, nullable=False),
    sa.Column("prefill_engine", sa.Integer),  # null for a defer, as is what follows
    sa.Column("decode_engine", sa.Integer),
    sa.Column("decode_share", sa.Float),
    sa.Column("wait_for", sa.Integer),  # null unless a defer
    sa.Column("path", sa.String(8), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("scores", sa.Text),  # JSON list of candidate scores, where the policy has them
    sa.Column("shadow_spec", sa.Text),  # shadow_*: null when no shadow was set
    sa.Column("shadow_version", sa.Text),
    sa.Column("shadow_defer", sa.Boolean),
    sa.Column("shadow_prefill_engine", sa.Integer),
    sa.Column("shadow_decode_engine", sa.Integer),
    sa.Column("shadow_decode_share", sa.Float),
    sa.Column("shadow_reason", sa.Text),
    sa.Column("latency_us", sa.Float, nullable=False),
    sa.Column("decided_at", sa.Float, nullable=False),
    sa.Column("outcome", sa.Text),  # JSON {name: float}
    sa.Column("completed_at", sa.Float),
    sa.Index("ix_decisions_client_request", "client_id", "request_id"))


@dataclass(frozen=True, slots=True)
class LoggedDecision:
    """One decision of a call, as the log records it."""

    request: Request
    answer: Answer  # what the serving policy answered
    policy_spec: str
    policy_version: str
    latency_us: float
    decided_at: float  # time.time()
    client_id: str = ""
    shadow: Answer = None
    shadow_spec: str | None = None  # None: no shadow was set
    shadow_version: str | None = None
    scores: tuple[float, ...] | None = None


@dataclass(frozen=True, slots=True)
class LogStats:
    written: int  # rows committed (decisions and outcomes)
    errors: int  # writes the database refused
    dropped: int  # rows dropped from a full queue
    pending: int  # rows recorded and not yet committed or dropped


class _Call(NamedTuple):
    snapshot: bytes
    cluster: str
    time_s: float
    rows: list[tuple[Any, ...]]  # decisions rows, all columns but the view id
    recorded_at: float


class _Outcome(NamedTuple):
    client_id: str
    request_id: int
    outcome: dict[str, float]
    completed_at: float


def _size(item: _Call | _Outcome) -> int:
    return len(item.rows) if isinstance(item, _Call) else 1


class DecisionLog:
    """Records calls and outcomes without blocking; a daemon thread writes them (see module)."""

    def __init__(self, url: str, *, flush_interval_s: float = 0.2,
                 max_rows_per_write: int = 2000, max_pending: int = 1_000_000) -> None:
        self._engine = _make_engine(url)
        META.create_all(self._engine)
        self._interval = flush_interval_s
        self._max_rows = max_rows_per_write
        self._max_pending = max_pending
        self._queue: deque[_Call | _Outcome] = deque()
        self._lock = threading.Lock()
        self._done_cond = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._closed = False
        self._queued = self._recorded = self._done = 0  # rows; done = written + dropped
        self._written = self._errors = self._dropped = 0
        self._failing = False
        self._session = uuid.uuid4().hex[:12]  # call ids stay unique across restarts
        self._calls = 0
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()

    # -- the request path: queue and return --------------------------------------------
    def record_call(self, snapshot: bytes, cluster: str, time_s: float,
                    rows: Sequence[LoggedDecision]) -> None:
        if rows:
            # Rows become tuples here, spread over the calls, rather than all at once in
            # the writer, which would hold the GIL the server needs for a whole write.
            tuples = [_decision_row(i, row) for i, row in enumerate(rows)]
            self._append(_Call(snapshot, cluster, time_s, tuples, time.time()), len(rows))
        elif self._closed:
            raise RuntimeError("decision log is closed")

    def record_outcome(self, client_id: str, request_id: int,
                       outcome: Mapping[str, float]) -> None:
        # Converted here, so that a bad value fails its caller, not every later write.
        values = {str(k): float(v) for k, v in outcome.items()}
        self._append(_Outcome(client_id, request_id, values, time.time()), 1)

    def _append(self, item: _Call | _Outcome, n: int) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("decision log is closed")
            self._queue.append(item)
            self._queued += n
            self._recorded += n
            if self._queued >= self._max_rows and not self._wake.is_set():
                self._wake.set()

    # -- waiting and stopping ----------------------------------------------------------
    @property
    def pending(self) -> int:
        return self._recorded - self._done

    @property
    def stats(self) -> LogStats:
        return LogStats(self._written, self._errors, self._dropped, self.pending)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Block until everything recorded so far is committed (or dropped); TimeoutError
        if that takes longer than ``timeout_s`` (the database refusing writes)."""
        with self._done_cond:
            target = self._recorded
            self._wake.set()
            if not self._done_cond.wait_for(lambda: self._done >= target, timeout_s):
                raise TimeoutError(f"decision log: {target - self._done} rows not committed "
                                   f"after {timeout_s:g} s ({self._errors} write errors)")

    def close(self, timeout_s: float = 30.0) -> None:
        """Refuse further records, flush, stop the writer. Idempotent; rows that cannot be
        written within ``timeout_s`` are logged as lost."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self.flush(timeout_s)
        except TimeoutError as err:
            log.error("%s; they are lost", err)
        self._stop.set()
        self._wake.set()
        self._thread.join()
        self._engine.dispose()

    # -- the writer thread -------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            if not self._drain():
                # Back off: an early wake (a full queue, a flush) must not hammer a
                # database that refuses writes.
                self._stop.wait(self._interval)

    def _drain(self) -> bool:
        """Write everything queued; False when a write failed (its rows stay queued)."""
        while True:
            with self._lock:
                batch, rows = [], 0
                while self._queue and rows < self._max_rows:
                    batch.append(self._queue.popleft())
                    rows += _size(batch[-1])
            if not batch:
                return True
            try:
                self._write(batch)
            except Exception as err:  # noqa: BLE001 - any database error: keep rows, retry
                self._requeue(batch, err)
                return False
            with self._done_cond:
                self._queued -= rows
                self._written += rows
                self._done += rows
                self._done_cond.notify_all()
            if self._failing:
                self._failing = False
                log.info("decision log writes recovered")

    def _requeue(self, batch: list[_Call | _Outcome], err: Exception) -> None:
        with self._done_cond:
            self._errors += 1
            self._queue.extendleft(reversed(batch))
            lost = 0
            while self._queued > self._max_pending and self._queue:
                n = _size(self._queue.popleft())
                self._queued -= n
                lost += n
            self._dropped += lost
            self._done += lost
            self._done_cond.notify_all()
        if not self._failing:  # once per failure streak: a down database would flood the log
            log.error("decision log write failed (retrying every %g s): %s", self._interval, err)
        self._failing = True
        if lost:
            log.warning("decision log queue over %d rows: dropped the oldest %d",
                        self._max_pending, lost)

    def _write(self, batch: list[_Call | _Outcome]) -> None:
        with self._engine.begin() as conn:
            for kind, run in groupby(batch, key=type):
                if kind is _Call:
                    self._insert_calls(conn, cast(list[_Call], list(run)))
                else:
                    conn.execute(_SET_OUTCOME, [
                        {"b_client": o.client_id, "b_request": o.request_id,
                         "b_outcome": json.dumps(o.outcome),
                         "b_at": o.completed_at} for o in cast(Iterable[_Outcome], run)])

    def _insert_calls(self, conn: sa.Connection, calls: list[_Call]) -> None:
        ids = [f"{self._session}-{self._calls + i}" for i in range(len(calls))]
        self._calls += len(calls)
        _insert_many(conn, VIEWS, _VIEW_COLUMNS, [
            (cid, c.cluster, c.time_s, c.snapshot, c.recorded_at)
            for cid, c in zip(ids, calls, strict=True)])
        # Ids by call id rather than INSERT .. RETURNING: works on every dialect.
        view_ids = dict(conn.execute(sa.select(VIEWS.c.call_id, VIEWS.c.view_id)
                                     .where(VIEWS.c.call_id.in_(ids))).all())
        _insert_many(conn, DECISIONS, _DECISION_COLUMNS, [
            (view_ids[cid], *row) for cid, call in zip(ids, calls, strict=True)
            for row in call.rows])


_VIEW_COLUMNS = ("call_id", "cluster", "time_s", "snapshot", "recorded_at")
_DECISION_COLUMNS = (
    "view_id", "batch_index", "client_id", "request_id", "agent_id", "turn", "hit_tokens",
    "appended_tokens", "gen_tokens", "arrival_s", "policy_spec", "policy_version",
    "defer", "prefill_engine", "decode_engine", "decode_share", "reason", "wait_for", "path",
    "scores", "shadow_spec", "shadow_version", "shadow_defer", "shadow_prefill_engine",
    "shadow_decode_engine", "shadow_decode_share", "shadow_reason", "latency_us", "decided_at")
_MARKERS = {"qmark": "?", "format": "%s"}


def _insert_many(conn: sa.Connection, table: sa.Table, columns: Sequence[str],
                 rows: list[tuple[Any, ...]]) -> None:
    """INSERT ``rows`` (tuples in ``columns`` order) in one executemany.

    With a positional driver (SQLite's qmark, MySQL's format) the tuples go to
    the driver as they are: SQLAlchemy's per-row parameter processing would cost
    several times the insert itself, and this thread shares the GIL with the
    server. Other drivers get dicts through SQLAlchemy.
    """
    marker = _MARKERS.get(conn.dialect.paramstyle)
    if marker is None:
        conn.execute(table.insert(), [dict(zip(columns, row, strict=True)) for row in rows])
        return
    sql = (f"INSERT INTO {table.name} ({', '.join(columns)}) "
           f"VALUES ({', '.join([marker] * len(columns))})")
    conn.exec_driver_sql(sql, rows)  # type: ignore[arg-type]


def _set_outcome_statement() -> sa.Update:
    # The latest placed (non-defer) decision of the request, if it has no outcome yet:
    # a repeated outcome finds that row taken and changes nothing.
    d = DECISIONS.alias("latest")
    latest = (sa.select(sa.func.max(d.c.decision_id))
              .where(d.c.client_id == sa.bindparam("b_client"),
                     d.c.request_id == sa.bindparam("b_request"), d.c.defer == sa.false())
              .scalar_subquery())
    return (DECISIONS.update()
            .where(DECISIONS.c.decision_id == latest, DECISIONS.c.outcome.is_(None))
            .values(outcome=sa.bindparam("b_outcome"), completed_at=sa.bindparam("b_at")))


_SET_OUTCOME = _set_outcome_statement()


def _answer_columns(answer: Answer) -> tuple[Any, ...]:
    """(defer, prefill_engine, decode_engine, decode_share, reason)."""
    if isinstance(answer, Decision):
        return (False, answer.prefill_engine, answer.decode_engine, answer.decode_share,
                answer.reason)
    return (True, None, None, None, answer.reason if answer is not None else "")


_NO_SHADOW = (None,) * 5


def _decision_row(index: int, row: LoggedDecision) -> tuple[Any, ...]:
    """A decisions row in :data:`_DECISION_COLUMNS` order, but the leading view id."""
    r, answer = row.request, row.answer
    shadow = _answer_columns(row.shadow) if row.shadow_spec is not None else _NO_SHADOW
    wait_for = (None if isinstance(answer, Decision)
                else int(answer.wait_for if answer is not None else WaitFor.ANY))
    scores = None if row.scores is None else json.dumps([float(s) for s in row.scores])
    return (index, row.client_id, r.request_id, r.agent_id, r.turn, r.hit_tokens,
            r.appended_tokens, r.gen_tokens, r.arrival_s, row.policy_spec, row.policy_version,
            *_answer_columns(answer), wait_for, path_of(answer), scores, row.shadow_spec,
            row.shadow_version, *shadow, row.latency_us, row.decided_at)


def _make_engine(url: str) -> sa.Engine:
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(url)
    memory = parsed.database in (None, "", ":memory:")
    # In memory, one shared connection: the writer thread must see the tables.
    engine = (sa.create_engine(url, poolclass=sa.StaticPool,
                               connect_args={"check_same_thread": False})
              if memory else sa.create_engine(url))

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers (export) never block the writer
        cursor.execute("PRAGMA synchronous=NORMAL")  # WAL keeps this safe against a kill
        cursor.close()

    return engine


# -- reading the log -------------------------------------------------------------------

def _open(url: str) -> sa.Engine:
    """An engine on an existing decision log; ValueError if ``url`` holds none."""
    parsed = sa.make_url(url)
    if (parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:")
            and not Path(parsed.database).is_file()):  # connecting would create an empty one
        raise ValueError(f"{url!r}: no such database file")
    engine = _make_engine(url)
    tables = set(sa.inspect(engine).get_table_names())
    if not {"views", "decisions"} <= tables:
        engine.dispose()
        raise ValueError(f"{url!r} holds no decision log (tables 'views' and 'decisions'); "
                         f"its tables: {sorted(tables) or 'none'}")
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
    for _, call in groupby(rows, key=attrgetter("view_id")):
        view = None
        for row in call:
            if view is None:
                view = view_from_pb(pb.ClusterSnapshot.FromString(row.snapshot), spec)
            request, logged = _logged(row)
            yield row.policy_version, policy.decide(request, view), logged
            if isinstance(logged, Decision):
                view = reserve(view, request, logged)


def _same(mine: Answer, logged: Decision | Defer, parts: list[int]) -> bool:
    """Whether ``mine`` agrees with ``logged``; counts the parts where both placed."""
    if not isinstance(mine, Decision) or not isinstance(logged, Decision):
        return not isinstance(mine, Decision) and not isinstance(logged, Decision)
    same = (mine.prefill_engine == logged.prefill_engine,
            mine.decode_engine == logged.decode_engine,
            abs(mine.decode_share - logged.decode_share) <= 1e-9)
    parts[0] += 1
    for i, s in enumerate(same, 1):
        parts[i] += s
    return all(same)
