"""``dualpath serve`` as a process: SIGTERM drains and logs every decision; SIGKILL loses
no more than the README says (the rows of the last ``--log-flush`` interval)."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from pathlib import Path

import grpc

from experiments.live.service_process import ServiceProcess
from tests.policy_service.conftest import Client, schedule_msg, sim_points

FLUSH_S = 0.5


class Load:
    """Client threads calling Schedule until the server stops answering."""

    def __init__(self, target: str, threads: int = 2) -> None:
        self.points = sim_points(100)
        self.ok: list[float] = []  # completion times of the calls answered
        self._threads = [threading.Thread(target=self._run, args=(target, i))
                         for i in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self, target: str, k: int) -> None:
        client = Client(target)
        msgs = [schedule_msg(r, v, client_id=f"c{k}") for r, v in self.points]
        i = 0
        while True:
            try:
                client.Schedule(msgs[i % len(msgs)], timeout=10)
            except grpc.RpcError:
                break
            self.ok.append(time.monotonic())
            i += 1
        client.close()

    def join(self) -> None:
        for t in self._threads:
            t.join(60)


def _rows(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM decisions").fetchone()[0]


def _writers(db: Path) -> list[int]:
    """Pids of decision-log writers still running on ``db``."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"policy_service.log_writer" in args and any(str(db).encode() in a for a in args):
            pids.append(int(cmdline.parent.name))
    return pids


def _serve(db: Path) -> ServiceProcess:
    return ServiceProcess(["--policy", "dualpath", "--db", f"sqlite:///{db}",
                           "--log-flush", str(FLUSH_S)])


def test_sigterm_drains_and_logs_every_decision(tmp_path):
    db = tmp_path / "decisions.db"
    server = _serve(db)
    load = Load(server.target)
    time.sleep(1.5)
    assert server.stop(signal.SIGTERM) == 0, "\n".join(server.output)
    load.join()
    assert len(load.ok) > 100
    assert _rows(db) == len(load.ok)
    assert "draining" in server.output and "stopped" in server.output
    assert not _writers(db)


def test_sigkill_loses_at_most_the_last_flush_interval(tmp_path):
    db = tmp_path / "decisions.db"
    server = _serve(db)
    load = Load(server.target)
    time.sleep(2.0)
    killed_at = time.monotonic()
    server.stop(signal.SIGKILL)
    load.join()
    # The writer outlives the server long enough to commit what it was sent.
    deadline = time.monotonic() + 20
    while _writers(db) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _writers(db), "the decision-log writer outlived its server"
    answered = [t for t in load.ok if t <= killed_at]
    lost = len(answered) - _rows(db)
    # Rows of the last interval may be lost, and no more (0.25 s of slack for the
    # sender's wake-up and the shipment in progress).
    recent = sum(1 for t in answered if t > killed_at - FLUSH_S - 0.25)
    print(f"answered {len(answered)}, logged {_rows(db)}, lost {lost}, bound {recent}")
    assert -len(load._threads) <= lost <= recent
