"""The KV block names, contents and checksums, and the storage service run as its own process."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from runtime.live.blocks import (
    Checksummer,
    block_content,
    block_name,
    checksum,
    fill_block_content,
    hashed_block_name,
    layer_slices,
)
from runtime.live.storage import (
    FILE_HEADER,
    REQUEST,
    REQUEST_MAGIC,
    BlockNotFound,
    BlockStore,
    ChecksumMismatch,
    StorageClient,
    StorageError,
    StorageProtocolError,
    SyncStorageClient,
    block_path,
    corrupt_block,
    verify,
)

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
    store = BlockStore(tmp_path, replicas=3)
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
        # Cancelled while waiting for its reply: the connection can't be trusted after.
        task = asyncio.create_task(c.get(name))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(StorageProtocolError, match="cancelled"):
            await c.stats()
        await c.close()
        with pytest.raises(StorageError, match="cannot connect"):
            await StorageClient("127.0.0.1", 1).connect()

    asyncio.run(go())
