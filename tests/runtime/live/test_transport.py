"""The one-sided transport contract, run against every transport this host supports.

Each transport parameter skips with :func:`probe`'s reason where the
transport cannot run (no package, no device). A child process owns a region
for the cross-process cases (one per transport, shared by the module).
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import sys
import threading
import types
from typing import Any

import pytest

from runtime.live.blocks import checksum
from runtime.live.transport import (
    TRANSPORTS,
    Region,
    Transport,
    TransportError,
    TransportUnavailable,
    make_transport,
    probe,
)
from runtime.live.transport import pyverbs as verbs
from runtime.live.transport.peer import PeerProcess
from runtime.live.transport.pyverbs import NO_DEVICE, rdma_devices
from runtime.live.transport.shm import segment_path

PEER_BYTES = 1 << 20
WAIT_S = 20.0


def _pattern(size: int, seed: int) -> bytes:
    return bytes((i * 31 + seed) & 0xFF for i in range(256)) * (size // 256) + bytes(size % 256)


@pytest.fixture(scope="module", params=TRANSPORTS)
def name(request: pytest.FixtureRequest) -> str:
    reason = probe(request.param)
    if reason is not None:
        pytest.skip(f"{request.param}: {reason}")
    return str(request.param)


@pytest.fixture(scope="module")
def peer(name: str):
    with PeerProcess(name, PEER_BYTES) as process:
        yield process


@pytest.fixture
def transport(name: str):
    instance = make_transport(name)
    yield instance
    instance.close()


def _filled(transport: Transport, size: int, seed: int) -> Region:
    region = transport.register(size)
    region.view[:] = _pattern(size, seed)
    return region


def test_register_gives_a_writable_byte_view_and_a_json_descriptor(transport: Transport) -> None:
    region = transport.register(3000)
    assert region.size == 3000 == len(region.view)
    assert region.view.format == "B" and not region.view.readonly
    assert region.view.tobytes() == bytes(3000)
    region.view[10:13] = b"abc"
    assert json.loads(json.dumps(region.descriptor)) == region.descriptor
    with pytest.raises(ValueError, match="size"):
        transport.register(0)


def test_write_into_another_process_then_read_back(transport: Transport, peer) -> None:
    remote = transport.connect(json.loads(json.dumps(peer.descriptor)))
    assert remote.size == PEER_BYTES
    src = _filled(transport, PEER_BYTES, seed=1)
    transport.write(src, 0, remote, 0, PEER_BYTES).wait(WAIT_S)
    assert peer.checksum() == checksum(src.view)

    peer.poke(5000, b"written by the owner itself")
    dst = transport.register(64)
    completion = transport.read(dst, 8, remote, 5000, 27)
    completion.wait(WAIT_S)
    assert completion.done()
    assert dst.view[8:35].tobytes() == b"written by the owner itself"


def test_another_process_writes_into_our_region(transport: Transport, peer) -> None:
    remote = transport.connect(peer.descriptor)
    src = _filled(transport, 4096, seed=5)
    transport.write(src, 0, remote, 0, 4096).wait(WAIT_S)
    ours = transport.register(8192)
    peer.push(json.loads(json.dumps(ours.descriptor)), 0, 1000, 4096)
    assert ours.view[1000:5096].tobytes() == src.view.tobytes()
    assert ours.view[:1000].tobytes() == bytes(1000)


def test_same_process_between_instances_and_to_itself(transport: Transport, name: str) -> None:
    other = make_transport(name)
    try:
        target = other.register(8192)
        remote = transport.connect(target.descriptor)
        src = _filled(transport, 8192, seed=2)
        transport.write(src, 0, remote, 0, 8192).wait(WAIT_S)
        assert target.view.tobytes() == src.view.tobytes()
    finally:
        other.close()
    own = transport.connect(src.descriptor)
    transport.write(src, 0, own, 4096, 100).wait(WAIT_S)
    assert src.view[4096:4196].tobytes() == src.view[:100].tobytes()


def test_offsets_at_region_boundaries(transport: Transport, peer) -> None:
    remote = transport.connect(peer.descriptor)
    src = _filled(transport, 4096, seed=3)
    end = PEER_BYTES - 100
    transport.write(src, 4096 - 100, remote, end, 100).wait(WAIT_S)
    assert peer.peek(end, 100) == src.view[-100:].tobytes()
    transport.write(src, 0, remote, 0, 1).wait(WAIT_S)
    assert peer.peek(0, 1) == src.view[:1].tobytes()
    transport.write(src, 4096, remote, PEER_BYTES, 0).wait(WAIT_S)  # empty, at both ends
    back = transport.register(4096)
    transport.read(back, 4096 - 100, remote, end, 100).wait(WAIT_S)
    assert back.view[-100:].tobytes() == src.view[-100:].tobytes()


@pytest.mark.parametrize(("src_offset", "dst_offset", "nbytes", "offending"), [
    (0, PEER_BYTES - 10, 11, "dst_offset"),
    (4000, 0, 97, "src_offset"),
    (-1, 0, 1, "src_offset"),
    (0, -5, 1, "dst_offset"),
    (0, 0, -1, "nbytes"),
])
def test_out_of_bounds_is_refused_naming_the_value(transport: Transport, peer, src_offset: int,
                                                   dst_offset: int, nbytes: int,
                                                   offending: str) -> None:
    remote = transport.connect(peer.descriptor)
    src = transport.register(4096)
    with pytest.raises(ValueError, match=f"{offending}=-?\\d"):
        transport.write(src, src_offset, remote, dst_offset, nbytes)
    # read() names its local offset dst_offset and the remote one src_offset.
    as_read = {"src_offset": "dst_offset", "dst_offset": "src_offset", "nbytes": "nbytes"}
    with pytest.raises(ValueError, match=f"{as_read[offending]}=-?\\d"):
        transport.read(src, src_offset, remote, dst_offset, nbytes)


def test_regions_of_another_kind_are_refused(transport: Transport, peer) -> None:
    remote = transport.connect(peer.descriptor)
    foreign = make_transport("shm")
    try:
        region = foreign.register(64)
        with pytest.raises(ValueError, match="not registered by this"):
            transport.write(region, 0, remote, 0, 8)
        if transport.name != "shm":
            with pytest.raises(ValueError, match="descriptor is for transport 'shm'"):
                transport.connect(region.descriptor)
    finally:
        foreign.close()


def test_concurrent_writes_from_four_threads_to_disjoint_ranges(transport: Transport,
                                                                 peer) -> None:
    remote = transport.connect(peer.descriptor)
    src = _filled(transport, PEER_BYTES, seed=4)
    quarter = PEER_BYTES // 4
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for chunk in range(0, quarter, quarter // 8):
                offset = i * quarter + chunk
                transport.write(src, offset, remote, offset, quarter // 8).wait(WAIT_S)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert peer.checksum() == checksum(src.view)


def test_close_is_idempotent_and_frees_regions(name: str) -> None:
    transport = make_transport(name)
    region = transport.register(4096)
    remote = transport.connect(region.descriptor)
    transport.close()
    transport.close()
    assert transport.closed
    with pytest.raises(TransportError, match="closed"):
        transport.write(region, 0, remote, 0, 8)
    with pytest.raises(TransportError, match="closed"):
        transport.register(64)
    if name == "shm":
        assert not os.path.exists(segment_path(region.descriptor["name"]))


def test_shm_owner_process_unlinks_its_segment_on_close() -> None:
    if probe("shm") is not None:
        pytest.skip(f"shm: {probe('shm')}")
    with PeerProcess("shm", 4096) as process:
        path = segment_path(process.descriptor["name"])
        assert os.path.exists(path)
    assert not os.path.exists(path)


def test_unknown_transport_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="shm, tcp, nixl, pyverbs"):
        make_transport("carrier-pigeon")
    with pytest.raises(ValueError, match="shm, tcp, nixl, pyverbs"):
        probe("carrier-pigeon")


def test_unavailable_transports_say_why() -> None:
    for name in TRANSPORTS:
        reason = probe(name)
        if reason is None:
            continue
        assert reason
        with pytest.raises(TransportUnavailable):
            make_transport(name).close()


def test_rdma_discovery_needs_no_pyverbs() -> None:
    devices = rdma_devices()
    assert isinstance(devices, list)
    if not devices:
        assert probe("pyverbs") == NO_DEVICE


# ---------------------------------------------------------------------------
# pyverbs logic against a fake NIC: no RDMA hardware is needed to check the
# handshake, the QP wiring, work-request bookkeeping and teardown. The fake
# moves bytes with memmove between registered addresses of this process.
# ---------------------------------------------------------------------------


class _FakeClosable:
    def close(self) -> None:
        pass

class _FakeContext(_FakeClosable):
    def __init__(self, name: str) -> None:
        self.name = name

    def query_port(self, port: int) -> Any:
        return types.SimpleNamespace(state=4, lid=7, active_mtu=3, max_msg_sz=1 << 31,
                                     link_layer=1)

    def query_gid(self, port: int, index: int) -> str:
        return "fe80:0000:0000:0000:0000:0000:0000:0001"

    def query_device(self) -> Any:
        return types.SimpleNamespace(max_qp_rd_atom=16)

class _FakeMR(_FakeClosable):
    nic: _FakeNic  # bound per fake NIC

    def __init__(self, pd: Any, length: int, access: int, address: int) -> None:
        self.lkey = self.rkey = next(self.nic.keys)
        self.nic.mrs[self.rkey] = (address, length)

    def close(self) -> None:
        self.nic.mrs.pop(self.rkey, None)

class _FakeCQ(_FakeClosable):
    def __init__(self, ctx: Any, cqe: int) -> None:
        self.entries: list[Any] = []

    def poll(self, num_entries: int = 1) -> tuple[int, list[Any]]:
        taken = self.entries[:num_entries]
        del self.entries[:num_entries]
        return len(taken), taken

class _FakeQP(_FakeClosable):
    nic: _FakeNic  # bound per fake NIC

    def __init__(self, pd: Any, init: Any) -> None:
        self.qp_num = next(self.nic.keys)
        self.cq = init.scq
        self.state = "RESET"
        self.nic.qps[self.qp_num] = self

    def to_init(self, attr: Any) -> None:
        self.state = "INIT"

    def to_rtr(self, attr: Any) -> None:
        assert self.state == "INIT" and attr.dest_qp_num in self.nic.qps
        self.dest, self.state = attr.dest_qp_num, "RTR"

    def to_rts(self, attr: Any) -> None:
        assert self.state == "RTR"
        self.state = "RTS"

    def post_send(self, wr: Any) -> None:
        assert self.state == "RTS" and self.nic.qps[self.dest].dest == self.qp_num
        base, length = self.nic.mrs[wr.rkey]
        assert base <= wr.remote_addr and wr.remote_addr + wr.sge.length <= base + length
        src, dst = (wr.sge.addr, wr.remote_addr) if wr.opcode == 0 else (
            wr.remote_addr, wr.sge.addr)
        ctypes.memmove(dst, src, wr.sge.length)
        self.cq.entries.append(types.SimpleNamespace(wr_id=wr.wr_id, status=0,
                                                     vendor_err=0))

class _FakeSendWR:
    def __init__(self, wr_id: int, opcode: int, num_sge: int, sg: list[Any],
                 send_flags: int) -> None:
        self.wr_id, self.opcode, self.sge = wr_id, opcode, sg[0]

    def set_wr_rdma(self, rkey: int, addr: int) -> None:
        self.rkey, self.remote_addr = rkey, addr


class _FakeNic:
    """Just enough of pyverbs for PyverbsTransport; one 'fabric' per test."""

    def __init__(self) -> None:
        self.qps: dict[int, Any] = {}
        self.mrs: dict[int, tuple[int, int]] = {}
        self.keys = itertools.count(100)
        self.modules = self._modules()

    def _modules(self) -> dict[str, types.ModuleType]:
        nic = self
        enums = types.SimpleNamespace(
            IBV_PORT_ACTIVE=4, IBV_LINK_LAYER_ETHERNET=2, IBV_ACCESS_LOCAL_WRITE=1,
            IBV_ACCESS_REMOTE_WRITE=2, IBV_ACCESS_REMOTE_READ=4, IBV_QPT_RC=2,
            IBV_SEND_SIGNALED=2, IBV_WR_RDMA_WRITE=0, IBV_WR_RDMA_READ=4, IBV_WC_SUCCESS=0)

        MR = type("MR", (_FakeMR,), {"nic": nic})
        QP = type("QP", (_FakeQP,), {"nic": nic})
        Context, CQ, SendWR, Closable = _FakeContext, _FakeCQ, _FakeSendWR, _FakeClosable

        def bag(**kwargs: Any) -> Any:
            return types.SimpleNamespace(**kwargs)

        contents = {
            "enums": vars(enums), "device": {"Context": Context},
            "pd": {"PD": lambda ctx: Closable()}, "mr": {"MR": MR}, "cq": {"CQ": CQ},
            "qp": {"QP": QP, "QPCap": bag, "QPInitAttr": bag, "QPAttr": bag},
            "addr": {"GID": str, "GlobalRoute": bag, "AHAttr": bag},
            "wr": {"SGE": lambda addr, length, lkey: bag(addr=addr, length=length),
                   "SendWR": SendWR},
        }
        modules = {"pyverbs": types.ModuleType("pyverbs")}
        for name, attributes in contents.items():
            module = types.ModuleType(f"pyverbs.{name}")
            module.__dict__.update(attributes)
            modules[f"pyverbs.{name}"] = module
        return modules


def test_pyverbs_transport_logic_on_a_fake_nic(monkeypatch: pytest.MonkeyPatch) -> None:
    nic = _FakeNic()
    for module_name, module in nic.modules.items():
        monkeypatch.setitem(sys.modules, module_name, module)
    monkeypatch.setattr(verbs, "rdma_devices", lambda: ["fake0"])
    owner, client = verbs.PyverbsTransport(), verbs.PyverbsTransport()
    try:
        target = owner.register(1 << 16)
        remote = client.connect(json.loads(json.dumps(target.descriptor)))
        src = _filled(client, 1 << 16, seed=6)
        client.write(src, 0, remote, 0, 1 << 16).wait(WAIT_S)
        assert target.view.tobytes() == src.view.tobytes()
        target.view[:5] = b"owner"
        back = client.register(16)
        client.read(back, 3, remote, 0, 5).wait(WAIT_S)
        assert back.view[3:8].tobytes() == b"owner"
        own = owner.connect(target.descriptor)  # loopback through the owner's own listener
        owner.write(target, 0, own, 100, 5).wait(WAIT_S)
        assert target.view[100:105].tobytes() == b"owner"
        assert client.connect(target.descriptor).size == 1 << 16  # the link is reused
        assert len(nic.qps) == 4
    finally:
        client.close()
        owner.close()
    assert not nic.mrs
