"""The KV block names, contents and checksums, and the storage service run as its own process,
killed and restarted under its clients and under a live run."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agents import resolve_policy
from runtime.live.blocks import (
    Checksummer,
    block_content,
    block_name,
    checksum,
    fill_block_content,
    hashed_block_name,
    layer_slices,
)
from runtime.live.cluster import LiveCluster, local_decider
from runtime.live.config import LiveOptions
from runtime.live.storage import (
    FILE_HEADER,
    REQUEST,
    REQUEST_MAGIC,
    RESPONSE,
    RESPONSE_MAGIC,
    BlockFileStore,
    BlockNotFound,
    ChecksumMismatch,
    StorageClient,
    StorageError,
    StorageProtocolError,
    StorageUnavailable,
    SyncStorageClient,
    block_path,
    corrupt_block,
    verify,
)
from runtime.preset import load_preset
from runtime.sim import Simulator
from runtime.workload.agentic import AgenticWorkload

REPO = Path(__file__).resolve().parents[3]
KIB = 1024

# ----------------------------------------------------------------------------- blocks


def test_names_are_stable_short_hex_and_distinct() -> None:
    assert block_name(3, 7) == block_name(3, 7)
    assert hashed_block_name(42) == hashed_block_name(42)
    names = [block_name(a, i) for a in range(20) for i in range(50)]
    names += [hashed_block_name(h) for h in range(1000)]
    assert len(set(names)) == len(names)
    assert all(len(n) == 24 and int(n, 16) >= 0 for n in names)
    # Same numbers, other namespace: never the same name.
    assert block_name(0, 5) != hashed_block_name(5)
    with pytest.raises(ValueError, match="agent_id"):
        block_name(-1, 0)
    with pytest.raises(TypeError, match="hash_id"):
        hashed_block_name("7")  # type: ignore[arg-type]


def test_content_is_deterministic_and_depends_on_the_name() -> None:
    a, b = block_name(1, 0), block_name(1, 1)
    for size in (1, 13, 4 * KIB, 16 * KIB + 5, 256 * KIB, 1024 * KIB + 8):
        one = block_content(a, size)
        assert len(one) == size and one == block_content(a, size)
        buf = bytearray(size)
        fill_block_content(a, buf)
        assert bytes(buf) == one
    x, y = np.frombuffer(block_content(a, 64 * KIB), np.uint8), \
        np.frombuffer(block_content(b, 64 * KIB), np.uint8)
    assert np.mean(x == y) < 0.01  # chance agreement only
    # No two layer slices alike: a misplaced layer can't pass the checksum.
    data = block_content(a, 512 * KIB)
    layers = [data[o:o + n] for o, n in layer_slices(len(data), 64)]
    assert len(set(layers)) == 64


def test_checksums_incremental_equal_whole() -> None:
    data = block_content(hashed_block_name(9), 96 * KIB)
    whole = checksum(data)
    assert len(whole) == 32
    view = memoryview(data)
    summer = Checksummer()
    for off, n in layer_slices(len(data), 6):
        summer.update(view[off:off + n])
    assert summer.hexdigest() == whole
    assert Checksummer().update(view[:10], view[10:]).hexdigest() == whole
    assert checksum(data[:-1] + bytes([data[-1] ^ 1])) != whole


def test_layer_slices() -> None:
    assert layer_slices(12, 3) == [(0, 4), (4, 4), (8, 4)]
    with pytest.raises(ValueError, match="does not divide"):
        layer_slices(10, 3)
    with pytest.raises(ValueError, match="layers"):
        layer_slices(10, 0)


def test_block_store_on_disk(tmp_path: Path) -> None:
    store = BlockFileStore(tmp_path, replicas=3)
    name = block_name(5, 5)
    data = block_content(name, 8 * KIB)
    assert store.put(name, data, checksum(data)) == 3
    assert store.path(name, 2) == tmp_path / "r2" / name[:2] / name
    raw = block_path(tmp_path, name, 1).read_bytes()
    assert raw[:4] == b"DPKV" and raw[FILE_HEADER.size:] == data
    assert not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(ChecksumMismatch, match=name):
        store.put(name, data, checksum(b"other"))
    with pytest.raises(ValueError, match="out of range"):
        store.read(name, 3)
    with pytest.raises(ValueError, match="invalid block name"):
        block_path(tmp_path, "../../etc", 0)


# ----------------------------------------------------------------------------- server


def _start_server(root: Path, *extra: str) -> tuple[subprocess.Popen[str], int]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime.live.storage", "--root", str(root), *extra],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("storage listening on "):
        proc.kill()
        raise AssertionError(f"no banner: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    host, port = line.split()[-1].rsplit(":", 1)
    assert host == "127.0.0.1"
    return proc, int(port)


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    root = tmp_path_factory.mktemp("store")
    proc, port = _start_server(root)
    yield root, port
    assert _stop(proc) == 0, "the server did not stop cleanly on SIGTERM"


@pytest.fixture
def client(server: tuple[Path, int]) -> Iterator[SyncStorageClient]:
    with SyncStorageClient("127.0.0.1", server[1]) as c:
        yield c


def test_put_get_round_trip(client: SyncStorageClient) -> None:
    name = block_name(100, 0)
    data = block_content(name, 64 * KIB)
    assert client.put(name, data) == 2
    for replica in (0, 1):
        got, stored = client.get(name, replica)
        assert got == data and stored == checksum(data)
    buf = bytearray(len(data))
    assert client.get_into(name, memoryview(buf)) == checksum(data)
    assert bytes(buf) == data
    with pytest.raises(StorageError, match="holds 65536 bytes"):
        client.get_into(name, bytearray(10))
    assert client.get(name)[0] == data  # the connection survived the mismatch
    assert client.put(name, data) == 2  # idempotent
    assert client.get(name, 1) == (data, checksum(data))


def test_put_with_bad_checksum_is_refused(client: SyncStorageClient) -> None:
    name = block_name(101, 0)
    with pytest.raises(ChecksumMismatch, match=name):
        client.put(name, b"payload", digest=checksum(b"other payload"))
    with pytest.raises(BlockNotFound):
        client.get(name)
    with pytest.raises(StorageProtocolError, match="not 32 lowercase hex"):
        client.put(name, b"payload", digest="Z" * 32)


def test_missing_block_is_named(client: SyncStorageClient) -> None:
    name = block_name(102, 0)
    with pytest.raises(BlockNotFound, match=f"block {name} not found"):
        client.get(name)
    with pytest.raises(BlockNotFound, match=name):
        client.repair(name)
    with pytest.raises(StorageProtocolError, match="out of range"):
        client.get(name, replica=7)


def test_ensure_creates_only_missing(server: tuple[Path, int], client: SyncStorageClient) -> None:
    root, _ = server
    names = [hashed_block_name(h) for h in range(1000, 1010)]
    client.put(names[0], block_content(names[0], 16 * KIB))
    assert client.ensure(16 * KIB, names) == 9
    assert client.ensure(16 * KIB, names) == 0
    block_path(root, names[3], 1).unlink()
    assert client.ensure(16 * KIB, names) == 1
    for name in names:
        data, stored = client.get(name, 1)
        assert data == block_content(name, 16 * KIB) and stored == checksum(data)
    with pytest.raises(StorageError, match="holds 16384 payload bytes, ENSURE asked for 100"):
        client.ensure(100, names[:1])


def test_corruption_is_caught_by_the_reader_and_repaired(
        server: tuple[Path, int], client: SyncStorageClient) -> None:
    root, _ = server
    name = block_name(103, 4)
    client.put(name, block_content(name, 32 * KIB))
    at = corrupt_block(root, name, replica=0)
    assert at == 16 * KIB
    data, stored = client.get(name, 0)
    assert checksum(data) != stored  # served as stored; the reader catches it
    with pytest.raises(ChecksumMismatch, match=name):
        verify(name, data, stored)
    assert client.repair(name) == 1
    data, stored = client.get(name, 0)
    verify(name, data, stored)
    assert client.repair(name) == 0
    corrupt_block(root, name, 0, offset=1)
    corrupt_block(root, name, 1, offset=2)
    with pytest.raises(StorageError, match="no replica matches its checksum"):
        client.repair(name)


def test_malformed_frames(server: tuple[Path, int], client: SyncStorageClient) -> None:
    _, port = server
    rng = np.random.default_rng(7)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(rng.bytes(200))
        reply = sock.recv(4096)
        assert reply[:4] == b"DPRS" and b"malformed frame" in reply
        assert sock.recv(4096) == b""  # closed: the framing is lost
    # Intact framing, unknown op: an error, and the connection stays usable.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(REQUEST.pack(REQUEST_MAGIC, 99, 0, 0, 0, b"\0" * 32, 3) + b"abc")
        reply = sock.recv(4096)
        assert b"unknown op 99" in reply
        sock.sendall(REQUEST.pack(REQUEST_MAGIC, 5, 0, 0, 0, b"\0" * 32, 0))
        assert b"gets" in sock.recv(4096)
    assert client.stats()["errors"] >= 2  # and the server is still up


def test_concurrent_clients_and_throughput(server: tuple[Path, int],
                                           client: SyncStorageClient) -> None:
    _, port = server
    size = 256 * KIB
    names = [block_name(200, i) for i in range(32)]
    assert client.ensure(size, names) == 32
    expected = {n: checksum(block_content(n, size)) for n in names}

    async def worker(k: int, rounds: int, buf: memoryview) -> int:
        async with StorageClient("127.0.0.1", port) as c:
            moved = 0
            for i in range(rounds):
                name = names[(k * 7 + i) % len(names)]
                stored = await c.get_into(name, buf, replica=i % 2)
                assert stored == expected[name]
                moved += size
            return moved

    async def run(clients: int, rounds: int, check: bool) -> float:
        bufs = [memoryview(bytearray(size)) for _ in range(clients)]
        t0 = time.perf_counter()
        moved = sum(await asyncio.gather(*(worker(k, rounds, bufs[k]) for k in range(clients))))
        dt = time.perf_counter() - t0
        if check:
            for k, buf in enumerate(bufs):
                name = names[(k * 7 + rounds - 1) % len(names)]
                assert checksum(buf) == expected[name]
        return moved / dt / 1e6

    async def puts_and_gets() -> None:
        async def one(k: int) -> None:
            async with StorageClient("127.0.0.1", port) as c:
                name = block_name(201, k)
                data = block_content(name, 48 * KIB)
                await asyncio.gather(c.put(name, data), c.stats())  # queued, not interleaved
                got, stored = await c.get(name, k % 2)
                verify(name, got, stored)
        await asyncio.gather(*(one(k) for k in range(8)))

    asyncio.run(puts_and_gets())
    asyncio.run(run(8, 20, check=True))
    mb_s = asyncio.run(run(4, 100, check=False))
    print(f"\nGET 256 KiB over loopback, 4 clients: {mb_s:.0f} MB/s")
    assert mb_s > 10


def test_async_client_errors(server: tuple[Path, int]) -> None:
    _, port = server

    async def go() -> None:
        c = StorageClient("127.0.0.1", port)
        with pytest.raises(StorageError, match="not connected"):
            await c.stats()
        await c.connect()
        name = block_name(300, 0)
        with pytest.raises(BlockNotFound, match=name):
            await c.get(name)
        with pytest.raises(ChecksumMismatch):
            await c.put(name, b"x" * 100, digest=checksum(b"y"))
        await c.put(name, b"x" * 100)
        assert await c.get(name) == (b"x" * 100, checksum(b"x" * 100))
        with pytest.raises(StorageError, match="ENSURE asked for 1000"):
            await c.ensure(1000, [name])
        # Cancelled while waiting for its reply: that connection can't be trusted
        # after, so the next call opens another.
        task = asyncio.create_task(c.get(name))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await c.stats())["puts"] >= 1
        assert c.reconnects == 1
        await c.close()
        with pytest.raises(StorageError, match="not connected"):
            await c.stats()
        with pytest.raises(StorageError, match="cannot connect"):
            await StorageClient("127.0.0.1", 1).connect()

    asyncio.run(go())


# ------------------------------------------------------------------- killed and restarted


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def test_a_server_killed_mid_writes_and_restarted_keeps_every_acknowledged_block(
        tmp_path: Path) -> None:
    proc, port = _start_server(tmp_path)
    size, total = 64 * KIB, 60
    acked: list[str] = []
    dead_pid = proc.pid
    leftover = block_path(tmp_path, block_name(401, 0), 0).with_suffix(f".{dead_pid}.0.tmp")

    async def go() -> None:
        nonlocal proc
        sync = SyncStorageClient("127.0.0.1", port)  # connected before the kill, idle through it
        async with StorageClient("127.0.0.1", port) as writer, \
                StorageClient("127.0.0.1", port) as reader:
            some_acked = asyncio.Event()

            async def put_all() -> None:
                for i in range(total):
                    name = block_name(400, i)
                    assert await writer.put(name, block_content(name, size)) == 2
                    acked.append(name)
                    if len(acked) == total // 3:
                        some_acked.set()

            putter = asyncio.create_task(put_all())
            await some_acked.wait()
            # SIGKILL while the writer keeps putting: a PUT is in flight or about to be.
            await asyncio.to_thread(_kill, proc)
            # What a server killed mid-write leaves: a temporary of a dead process.
            leftover.parent.mkdir(parents=True, exist_ok=True)
            leftover.write_bytes(b"half a block")
            proc, again = await asyncio.to_thread(_start_server, tmp_path, "--port", str(port))
            assert again == port
            await putter  # the writer reconnected and went on
            assert acked == [block_name(400, i) for i in range(total)]
            assert writer.reconnects >= 1
            for name in acked:
                for replica in (0, 1):
                    data, stored = await reader.get(name, replica)
                    verify(name, data, stored)
                    assert data == block_content(name, size)
            assert reader.reconnects >= 1
        name = acked[-1]
        assert sync.get(name, 1) == (block_content(name, size), checksum(block_content(name, size)))
        assert sync.put(block_name(400, total), b"after the restart") == 2
        assert sync.reconnects >= 1
        sync.close()

    try:
        asyncio.run(go())
        assert not leftover.exists(), "the restarted server left a dead writer's temporary"
        assert not list(tmp_path.rglob("*.tmp"))
        # A temporary is never taken for a block.
        with SyncStorageClient("127.0.0.1", port) as c, pytest.raises(BlockNotFound):
            c.get(block_name(401, 0))
    finally:
        assert _stop(proc) == 0


def test_a_live_writers_temporaries_are_left_alone(tmp_path: Path) -> None:
    store = BlockFileStore(tmp_path)
    name = block_name(402, 0)
    store.put(name, b"x" * 100, checksum(b"x" * 100))
    mine = store.path(name, 0).with_suffix(f".{os.getpid()}.7.tmp")
    foreign = store.path(name, 0).with_name("notes.tmp")  # not a temporary of ours
    mine.write_bytes(b"being written")
    foreign.write_bytes(b"someone else's")
    assert store.remove_temporaries() == 0
    assert mine.exists() and foreign.exists()


class _CutFirstReply:
    """A fake storage server that answers one GET per connection with ``payload``;
    on the first connection it dies halfway through the payload."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.connections = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(None)
                self.connections += 1
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        head = _recv_exact(conn, REQUEST.size)
        _recv_exact(conn, REQUEST.unpack(head)[3])
        n = len(self.payload)
        conn.sendall(RESPONSE.pack(RESPONSE_MAGIC, 0, n, checksum(self.payload).encode(), n))
        if self.connections == 1:
            conn.sendall(b"\xaa" * (n // 2))  # garbage where the payload begins, then gone
            return
        conn.sendall(self.payload)
        conn.recv(1)  # until the client hangs up


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        assert chunk, "the client hung up mid-request"
        data += chunk
    return data


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_a_call_cut_mid_reply_is_sent_again_from_scratch(kind: str) -> None:
    name = block_name(403, 0)
    data = block_content(name, 64 * KIB)
    server = _CutFirstReply(data)
    buf = bytearray(len(data))
    try:
        if kind == "async":
            async def go() -> tuple[str, int]:
                async with StorageClient("127.0.0.1", server.port) as c:
                    return await c.get_into(name, buf), c.reconnects
            stored, reconnects = asyncio.run(go())
        else:
            with SyncStorageClient("127.0.0.1", server.port) as c:
                stored, reconnects = c.get_into(name, buf), c.reconnects
    finally:
        server.close()
    assert stored == checksum(data) and bytes(buf) == data
    assert server.connections == 2 and reconnects == 1


def test_a_client_gives_up_after_its_budget_naming_the_address_and_the_call(
        tmp_path: Path) -> None:
    proc, port = _start_server(tmp_path)
    name = block_name(404, 0)
    where = rf"storage at 127\.0\.0\.1:{port}"

    async def go() -> None:
        async with StorageClient("127.0.0.1", port, retry_s=0.3) as c:
            await c.stats()
            sync = SyncStorageClient("127.0.0.1", port, retry_s=0.3)
            _kill(proc)
            with pytest.raises(StorageUnavailable, match=rf"{where}: GET {name} replica 1 failed"):
                await c.get(name, 1)
            with pytest.raises(StorageUnavailable, match=rf"{where}: PUT {name} failed"):
                sync.put(name, b"payload")
            sync.close()

    try:
        asyncio.run(go())
    finally:
        if proc.poll() is None:
            _kill(proc)


# ------------------------------------------------------------- killed under a live run


def _run_with_storage_killed(options: LiveOptions, after_s: float) -> tuple[dict, list[bool]]:
    """A live run (tiny preset, 2 agents) whose storage service is SIGKILLed ``after_s``
    wall seconds into the replay; returns its metrics and what each kill found."""
    spec = load_preset("tiny", ("block_tokens=1024",))
    cluster = LiveCluster(spec, options)
    killed: list[bool] = []
    timers: list[threading.Timer] = []

    def arm(router: object) -> None:  # every node is up: the replay starts now
        timer = threading.Timer(after_s, lambda: killed.append(cluster.kill_storage()))
        timers.append(timer)
        timer.start()

    decider = local_decider(resolve_policy("dualpath", spec).policy)
    try:
        metrics = cluster.run(AgenticWorkload(2, "32k", 0), decider, router_hook=arm)
    finally:
        for timer in timers:
            timer.cancel()
    sim = Simulator(spec, AgenticWorkload(2, "32k", 0))
    metrics["sim_requests"] = sim.run(resolve_policy("dualpath", spec).policy).metrics["requests"]
    return metrics, killed


def _assert_survived(metrics: dict, killed: list[bool]) -> None:
    live = metrics["live"]
    assert killed == [True]
    assert live["storage_restarts"] == 1
    assert metrics["requests"] == metrics["sim_requests"]
    assert live["blocks_verified"] > 100
    assert live.get("checksum_failures", 0) == 0


def test_a_live_run_survives_its_storage_service_being_killed() -> None:
    metrics, killed = _run_with_storage_killed(LiveOptions(time_scale=0.25), after_s=1.0)
    _assert_survived(metrics, killed)


def test_a_live_run_in_namespaces_survives_its_storage_service_being_killed() -> None:
    from runtime.live.netns import netns_available

    reason = netns_available()
    if reason is not None:
        pytest.skip(f"network namespaces unusable here: {reason}")
    options = LiveOptions(time_scale=0.5, transport="tcp", netns=True)
    metrics, killed = _run_with_storage_killed(options, after_s=2.0)
    _assert_survived(metrics, killed)
