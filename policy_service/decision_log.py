"""The service's decision log: every call's view and decisions, and their outcomes, in SQL.

Contract:

* ``record_call``, ``record_later`` and ``record_outcome`` never touch the database:
  they append to an in-memory queue and return (microseconds; they sit on the
  request path). ``record_later`` defers even the rows: the shipping thread builds
  them, in recording order, after the caller has answered.
* Every ``flush_interval_s`` (sooner once ``max_rows_per_write`` rows wait) a
  thread ships what is queued to a writer process (:mod:`policy_service.log_writer`),
  which commits it in recording order, one transaction per write of about
  ``max_rows_per_write`` rows. A call's view and its decisions commit together;
  an outcome commits after every decision recorded before it.
* Loss on a hard kill of the server: at most the rows recorded in the last
  ``flush_interval_s`` (not yet shipped). What was shipped is committed: the
  writer outlives the server long enough to write it, then exits. While the
  database refuses writes, the writer keeps the rows (lost if it is killed too),
  logs once, counts each refused write in ``stats.errors`` and retries every
  ``flush_interval_s``; beyond ``max_pending`` rows kept, the oldest are dropped
  and counted in ``stats.dropped``. If the writer dies, what it had not
  committed and everything recorded later is counted as dropped, and logged.
  (SQLite runs in WAL mode with ``synchronous=NORMAL``: a commit survives a
  process kill, though an OS crash may undo the last commits.)
* ``flush`` blocks until everything recorded before it is committed (or
  dropped); ``close`` flushes, then stops the writer.

``export`` writes the log as Parquet; ``agree`` replays it against another policy.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby
from operator import attrgetter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from policy_service.codec import cluster_digest, view_from_pb
from policy_service.log_writer import (
    DECISIONS,
    META,
    VIEWS,
    Call,
    Item,
    Later,
    LogEntry,
    LoggedDecision,
    Outcome,
    decision_row,
    is_memory,
    make_engine,
    receive,
    send,
    size,
)
from policy_service.proto import scheduler_pb2 as pb
from policy_service.replay import replay_call, same_answer, same_parts
from runtime.cluster import ClusterSpec
from runtime.decision import Decision, Defer, WaitFor
from runtime.policy import Policy
from runtime.request import Request

log = logging.getLogger(__name__)
Answer = Decision | Defer | None

@dataclass(frozen=True, slots=True)
class LogStats:
    written: int  # rows committed (decisions and outcomes)
    errors: int  # writes the database refused
    dropped: int  # rows dropped from a full queue
    pending: int  # rows recorded and not yet committed or dropped


# Rows per shipment to the writer: building and pickling one holds the GIL (about
# 0.1 ms for 16 rows, under the server's switch interval), released between them.
_SLICE_ROWS = 16


class DecisionLog:
    """Records calls and outcomes without blocking; a writer process commits them
    (see the module docstring and :mod:`policy_service.log_writer`)."""

    def __init__(self, url: str, *, flush_interval_s: float = 0.2,
                 max_rows_per_write: int = 2000, max_pending: int = 1_000_000) -> None:
        if is_memory(url):
            raise ValueError(f"decision log {url!r}: an in-memory database lives in one "
                             "process and the log is written by another; give a file")
        engine = make_engine(url)  # tables made here: a bad URL fails its caller now
        try:
            META.create_all(engine)
        finally:
            engine.dispose()
        self._interval = flush_interval_s
        self._max_rows = max_rows_per_write
        self._queue: deque[Item | Later] = deque()
        self._lock = threading.Lock()
        self._done_cond = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._closed = False
        self._queued = self._recorded = self._done = 0  # rows; done = written + dropped
        self._written = self._errors = self._dropped = 0
        self._child = subprocess.Popen(
            [sys.executable, "-m", "policy_service.log_writer", url, uuid.uuid4().hex[:12],
             str(flush_interval_s), str(max_rows_per_write), str(max_pending)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._sender = threading.Thread(target=self._send_loop, name="decision-log-send",
                                        daemon=True)
        self._reader = threading.Thread(target=self._read_loop, name="decision-log-acks",
                                        daemon=True)
        self._sender.start()
        self._reader.start()

    # -- the request path: queue and return --------------------------------------------
    def record_call(self, snapshot: bytes, cluster: str, time_s: float,
                    rows: Sequence[LoggedDecision]) -> None:
        if rows:
            # Rows become plain tuples here, a few microseconds per call, rather than
            # all at once later, which would hold the GIL the server needs.
            tuples = [decision_row(i, row) for i, row in enumerate(rows)]
            self._append(Call(snapshot, cluster, time_s, tuples, time.time()), len(rows))
        elif self._closed:
            raise RuntimeError("decision log is closed")

    def record_later(self, rows: int, build: Callable[[], LogEntry]) -> None:
        """Record ``build()``'s call as :meth:`record_call` would, ``build`` being run
        later on the shipping thread, so that serializing a view and building rows costs
        the request path nothing. ``build`` must return ``rows`` decisions and read only
        what nobody changes meanwhile. If it raises, the call's rows count as dropped
        (and are logged); the log goes on."""
        if rows:
            self._append(Later(build, rows, time.time()), rows)
        elif self._closed:
            raise RuntimeError("decision log is closed")

    def record_outcome(self, client_id: str, request_id: int,
                       outcome: Mapping[str, float]) -> None:
        # Converted here, so that a bad value fails its caller, not every later write.
        values = {str(k): float(v) for k, v in outcome.items()}
        self._append(Outcome(client_id, request_id, values, time.time()), 1)

    def _append(self, item: Item | Later, n: int) -> None:
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
        self._wake.set()
        self._sender.join()
        try:
            self._child.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._child.kill()
            self._child.wait()
        self._reader.join()

    # -- shipping to the writer --------------------------------------------------------
    def _send_loop(self) -> None:
        stdin = self._child.stdin
        assert stdin is not None
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            with self._lock:
                batch = list(self._queue)
                self._queue.clear()
                self._queued = 0
                closing = self._closed
            try:
                # In slices, yielding between them: building and pickling hold the GIL,
                # and the server's event loop should not wait for a whole interval's rows.
                for part in self._slices(batch):
                    send(stdin, part)
                    time.sleep(0)
            except OSError:  # the writer died; the reader says so and counts the loss
                return
            if closing:
                stdin.close()  # the writer commits the rest and exits
                return

    def _slices(self, batch: list[Item | Later]) -> Iterator[list[Item]]:
        """``batch`` in order, in lists of about :data:`_SLICE_ROWS` rows, deferred calls
        built; one that cannot be is logged and its rows count as dropped."""
        part: list[Item] = []
        rows = 0
        for entry in batch:
            try:
                item = entry.call() if isinstance(entry, Later) else entry
            except Exception:  # noqa: BLE001 - one broken record must not stop the log
                self._lost(size(entry))
                continue
            part.append(item)
            rows += size(item)
            if rows >= _SLICE_ROWS:
                yield part
                part, rows = [], 0
        if part:
            yield part

    def _lost(self, rows: int) -> None:
        log.exception("decision log: a call's %d rows could not be built; dropped", rows)
        with self._done_cond:
            self._dropped += rows
            self._done += rows
            self._done_cond.notify_all()

    def _read_loop(self) -> None:
        stdout = self._child.stdout
        assert stdout is not None
        try:
            while True:
                written, dropped, errors = receive(stdout)
                with self._done_cond:
                    self._written += written
                    self._dropped += dropped
                    self._errors += errors
                    self._done += written + dropped
                    self._done_cond.notify_all()
        except (EOFError, OSError):
            pass
        with self._done_cond:
            lost = self._recorded - self._done
            if lost and not self._closed:
                log.error("decision log writer exited (status %s): %d rows lost, and the "
                          "log records nothing more", self._child.poll(), lost)
            self._closed = True
            self._dropped += lost
            self._done += lost
            self._done_cond.notify_all()


# -- reading the log -------------------------------------------------------------------

def _open(url: str) -> sa.Engine:
    """An engine on an existing decision log; ValueError if ``url`` holds none."""
    parsed = sa.make_url(url)
    if (parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:")
            and not Path(parsed.database).is_file()):  # connecting would create an empty one
        raise ValueError(f"{url!r}: no such database file")
    engine = make_engine(url)
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
