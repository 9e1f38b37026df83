"""The decision log's writer: its own process, so that SQL never runs beside the server.

The server's process only queues rows and ships them here (length-prefixed
pickles over the child's stdin); this process writes them in transactions and
answers each write with how many rows it committed, dropped and failed (over
stdout). Running SQLite (or a database driver) in the server's process, even
in a thread, costs its event loop the GIL for every row and showed in the
scheduling calls' tail latency.

When its stdin closes (the server stopped, or was killed), the writer commits
what it received and exits. Run by :class:`policy_service.decision_log.DecisionLog`:
``python -m policy_service.log_writer URL INTERVAL_S MAX_ROWS MAX_PENDING``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import queue
import struct
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
from itertools import groupby
from typing import IO, Any, NamedTuple

import sqlalchemy as sa

from policy_service.log_schema import (
    CANARY_EVENTS,
    DECISION_COLUMNS,
    DECISIONS,
    OUTCOME_COLUMNS,
    VIEW_COLUMNS,
    VIEWS,
    LoggedDecision,
    decision_row,
    make_engine,
)

log = logging.getLogger("policy_service.log_writer")
_FRAME = struct.Struct("<I")


class Call(NamedTuple):
    """A Schedule/ScheduleBatch call: its view and its decisions rows."""

    snapshot: bytes
    cluster: str
    time_s: float
    rows: list[tuple[Any, ...]]  # decisions rows in DECISION_COLUMNS order, without view_id
    recorded_at: float


class Outcome(NamedTuple):
    client_id: str
    request_id: int
    outcome: dict[str, float]
    completed_at: float


class Event(NamedTuple):
    """A change of the canary (a canary_events row; the fields are its columns)."""

    event: str
    spec: str
    version: str
    share: float
    reason: str
    at: float


Item = Call | Outcome | Event
#: A call's record: (serialized snapshot, cluster digest, view time_s, its decisions).
LogEntry = tuple[bytes, str, float, Sequence[LoggedDecision]]


class Later(NamedTuple):
    """A call recorded before its rows are built (the server's shipping thread builds
    them, off the request path)."""

    build: Callable[[], LogEntry]
    rows: int  # decisions ``build`` returns
    recorded_at: float

    def call(self) -> Call:
        snapshot, cluster, time_s, rows = self.build()
        if len(rows) != self.rows:
            raise ValueError(f"{len(rows)} rows built, {self.rows} announced")
        return Call(snapshot, cluster, time_s,
                    [decision_row(i, row) for i, row in enumerate(rows)], self.recorded_at)


def size(item: Item | Later) -> int:
    """Rows an item counts for: a call's decisions, or one outcome or event."""
    return item.rows if isinstance(item, Later) else (
        len(item.rows) if isinstance(item, Call) else 1)


# -- framing ------------------------------------------------------------------------

def send(stream: IO[bytes], obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_FRAME.pack(len(data)) + data)
    stream.flush()


def receive(stream: IO[bytes]) -> Any:
    """The next object, or EOFError when the stream ends."""
    head = stream.read(_FRAME.size)
    if len(head) < _FRAME.size:
        raise EOFError
    (n,) = _FRAME.unpack(head)
    data = stream.read(n)
    if len(data) < n:
        raise EOFError
    return pickle.loads(data)


# -- the database -----------------------------------------------------------------------

_MARKERS = {"qmark": "?", "format": "%s"}


def _insert_many(conn: sa.Connection, table: sa.Table, columns: Sequence[str],
                 rows: list[tuple[Any, ...]]) -> None:
    """INSERT ``rows`` (tuples in ``columns`` order) in one executemany: with a
    positional driver (SQLite's qmark, MySQL's format) the tuples go to the driver
    as they are, skipping SQLAlchemy's per-row parameter processing."""
    marker = _MARKERS.get(conn.dialect.paramstyle)
    if marker is None:
        conn.execute(table.insert(), [dict(zip(columns, row, strict=True)) for row in rows])
        return
    sql = (f"INSERT INTO {table.name} ({', '.join(columns)}) "
           f"VALUES ({', '.join([marker] * len(columns))})")
    conn.exec_driver_sql(sql, rows)


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
            .values(outcome=sa.bindparam("b_outcome"), completed_at=sa.bindparam("b_at"),
                    **{k: sa.bindparam(f"b_{k}") for k in OUTCOME_COLUMNS}))


_SET_OUTCOME = _set_outcome_statement()


class Writer:
    """Writes batches of items, one transaction each, in order."""

    def __init__(self, url: str, session: str) -> None:
        self.engine = make_engine(url)
        self._session = session  # call ids stay unique across writers and restarts
        self._calls = 0

    def write(self, batch: list[Item]) -> None:
        with self.engine.begin() as conn:
            for kind, run in groupby(batch, key=type):
                items = list(run)
                if kind is Call:
                    self._insert_calls(conn, [c for c in items if isinstance(c, Call)])
                elif kind is Event:
                    conn.execute(CANARY_EVENTS.insert(),
                                 [e._asdict() for e in items if isinstance(e, Event)])
                else:
                    conn.execute(_SET_OUTCOME, [
                        {"b_client": o.client_id, "b_request": o.request_id,
                         "b_outcome": json.dumps(o.outcome), "b_at": o.completed_at,
                         **{f"b_{k}": o.outcome.get(k) for k in OUTCOME_COLUMNS}}
                        for o in items if isinstance(o, Outcome)])

    def _insert_calls(self, conn: sa.Connection, calls: list[Call]) -> None:
        ids = [f"{self._session}-{self._calls + i}" for i in range(len(calls))]
        self._calls += len(calls)
        _insert_many(conn, VIEWS, VIEW_COLUMNS, [
            (cid, c.cluster, c.time_s, c.snapshot, c.recorded_at)
            for cid, c in zip(ids, calls, strict=True)])
        # Ids by call id rather than INSERT .. RETURNING: works on every dialect.
        view_ids = dict(conn.execute(sa.select(VIEWS.c.call_id, VIEWS.c.view_id)
                                     .where(VIEWS.c.call_id.in_(ids))).all())
        _insert_many(conn, DECISIONS, DECISION_COLUMNS, [
            (view_ids[cid], *row) for cid, call in zip(ids, calls, strict=True)
            for row in call.rows])


# -- the process ------------------------------------------------------------------------

_END = object()


def serve(url: str, session: str, interval_s: float, max_rows: int, max_pending: int,
          inbox: IO[bytes], outbox: IO[bytes]) -> None:
    """Write what arrives on ``inbox`` until it ends; after each attempt, send
    ``(committed, dropped, errors)`` (counts since the last report) on ``outbox``."""
    writer = Writer(url, session)
    arrived: queue.Queue[Any] = queue.Queue()
    threading.Thread(target=_read_all, args=(inbox, arrived), daemon=True).start()
    held: deque[Item] = deque()  # received, not yet committed
    failing, ended = False, False
    while not (ended and not held):
        try:  # wait for work; while failing, retry after the interval
            got = arrived.get(timeout=interval_s if held else None)
        except queue.Empty:
            got = None
        while got is not None:
            if got is _END:
                ended = True
            else:
                held.extend(got)
            try:
                got = arrived.get_nowait()
            except queue.Empty:
                got = None
        failing = _write_held(writer, held, max_rows, max_pending, failing, interval_s, outbox)
        if ended and failing:
            log.error("decision log: the server is gone and the database refuses writes: "
                      "%d rows lost", sum(size(i) for i in held))
            return
    writer.engine.dispose()


def _write_held(writer: Writer, held: deque[Item], max_rows: int, max_pending: int,
                failing: bool, interval_s: float, outbox: IO[bytes]) -> bool:
    """Write ``held`` in batches of about ``max_rows``; True if a write failed."""
    while held:
        batch, rows = [], 0
        while held and rows < max_rows:
            batch.append(held.popleft())
            rows += size(batch[-1])
        try:
            writer.write(batch)
        except Exception as err:  # noqa: BLE001 - any database error: keep rows, retry
            held.extendleft(reversed(batch))
            dropped, total = 0, sum(size(i) for i in held)
            while total > max_pending:
                n = size(held.popleft())
                dropped += n
                total -= n
            if not failing:  # once per failure streak: a down database would flood the log
                log.error("decision log write failed (retrying every %g s): %s", interval_s, err)
            if dropped:
                log.warning("decision log queue over %d rows: dropped the oldest %d",
                            max_pending, dropped)
            send(outbox, (0, dropped, 1))
            return True
        if failing:
            log.info("decision log writes recovered")
            failing = False
        send(outbox, (rows, 0, 0))
    return failing


def _read_all(inbox: IO[bytes], arrived: queue.Queue[Any]) -> None:
    try:
        while True:
            arrived.put(receive(inbox))
    except (EOFError, OSError):
        arrived.put(_END)


def _background() -> None:
    """Run at a low priority (nice 10): about a tenth of a busy core's share.

    The writer is rarely urgent: a row may wait in its queue a little longer, while a
    scheduling call that waits for the CPU shows in the service's tail latency. It
    must still make progress under sustained full load (Linux's SCHED_IDLE, tried
    first, starved it: no row was written and ``flush`` and ``close`` timed out while
    every core was busy), so it keeps a share rather than only idle time.
    """
    with contextlib.suppress(OSError, AttributeError):
        os.nice(10)


def main(argv: Sequence[str]) -> int:
    url, session, interval, max_rows, max_pending = argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    _background()
    serve(url, session, float(interval), int(max_rows), int(max_pending),
          sys.stdin.buffer, sys.stdout.buffer)
    return 0


if __name__ == "__main__":
    # Run the importable module's main, not this __main__ copy: the pickled items
    # name policy_service.log_writer's classes.
    from policy_service.log_writer import main as _main

    sys.exit(_main(sys.argv[1:]))
