"""The service's decision log: every call's view and decisions, and their outcomes, in SQL.

Contract:

* ``record_call``, ``record_later``, ``record_outcome`` and ``record_event`` never
  touch the database: they append to an in-memory queue and return (microseconds;
  they sit on the request path). ``record_later`` defers even the rows: the shipping thread builds
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

Reading it back (export, agreement, sessions for replay): :mod:`policy_service.log_reader`.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from policy_service.log_schema import LoggedDecision, create_log, decision_row, is_memory
from policy_service.log_writer import (
    Call,
    Event,
    Item,
    Later,
    LogEntry,
    Outcome,
    receive,
    send,
    size,
)
from runtime.decision import Decision, Defer

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
        create_log(url)  # tables made here: a bad URL or an old log fails its caller now
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

    def record_event(self, event: str, spec: str, version: str, share: float,
                     reason: str) -> None:
        """A change of the canary (a canary_events row), in order with the rest."""
        self._append(Event(event, spec, version, float(share), reason, time.time()), 1)

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
