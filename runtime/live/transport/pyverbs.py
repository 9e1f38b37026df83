"""RDMA transport: RC queue pairs driven through pyverbs (rdma-core's Python binding).

A region is a numpy buffer registered as a memory region (MR) with remote
read and write access; its descriptor carries the address, the rkey and the
owner's side-channel endpoint. Writes and reads are RDMA WRITE / RDMA READ
work requests on a reliable-connected queue pair (QP): the owner's CPU takes
no part once the QPs are connected.

Connecting needs both sides' QP numbers, so the owner of regions listens on a
small TCP side channel: :meth:`PyverbsTransport.connect` creates a QP, sends
its ``qp_num``/``lid``/``gid``/``psn`` there, the owner creates a matching QP,
moves it INIT -> RTR -> RTS with those values and answers with its own, and
the connecting side finishes the same transitions. One QP pair serves every
region of one owner.

Discovery (:func:`rdma_devices`, :func:`probe`) never imports pyverbs, so it
works on hosts without it. pyverbs is an optional extra that builds against
rdma-core and must match the host's libibverbs; CI never installs it.
Settings: ``device`` (default ``$DUALPATH_RDMA_DEVICE`` or the first device),
``port`` (1), ``gid_index`` (default ``$DUALPATH_RDMA_GID_INDEX`` or 0; RoCE
fabrics usually want the RoCE v2 GID of the interface).
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import json
import os
import secrets
import socket
import threading
from types import SimpleNamespace
from typing import Any

import numpy as np

from runtime.live.transport.base import (
    Completion,
    PolledCompletion,
    Region,
    RemoteRegion,
    Transport,
    TransportError,
    TransportUnavailable,
    advertised_host,
    check_size,
    descriptor_field,
)

SYS_CLASS_INFINIBAND = "/sys/class/infiniband"
NO_DEVICE = f"no RDMA device: {SYS_CLASS_INFINIBAND} is empty or absent"
NOT_INSTALLED = "pyverbs not installed (optional extra; it must match the host's libibverbs)"
_MAX_MESSAGE = 1 << 30      # bytes per work request; larger transfers are split
_HANDSHAKE_LIMIT = 4096
_HANDSHAKE_TIMEOUT = 10.0


def rdma_devices() -> list[str]:
    """Names of the RDMA devices the kernel exposes (``/sys/class/infiniband``)."""
    try:
        return sorted(os.listdir(SYS_CLASS_INFINIBAND))
    except OSError:
        return []


def _load() -> SimpleNamespace:
    try:
        modules = {name: importlib.import_module(f"pyverbs.{name}")
                   for name in ("device", "pd", "mr", "cq", "qp", "addr", "wr", "enums")}
    except ImportError as exc:
        raise TransportUnavailable(f"{NOT_INSTALLED}: {exc}") from exc
    return SimpleNamespace(**modules)


def pick_device(device: str | None = None) -> str:
    """``device``, else ``$DUALPATH_RDMA_DEVICE``, else the first RDMA device."""
    devices = rdma_devices()
    if not devices:
        raise TransportUnavailable(NO_DEVICE)
    chosen = device or os.environ.get("DUALPATH_RDMA_DEVICE") or devices[0]
    if chosen not in devices:
        raise TransportUnavailable(f"no RDMA device {chosen!r} (found: {', '.join(devices)})")
    return chosen


def probe() -> str | None:
    """None when pyverbs and an RDMA device with an active port 1 are present, else why not."""
    try:
        device = pick_device()
        v = _load()
    except TransportUnavailable as exc:
        return str(exc)
    try:
        ctx = v.device.Context(name=device)
        try:
            state = ctx.query_port(1).state
        finally:
            ctx.close()
    except Exception as exc:
        return f"cannot open RDMA device {device}: {exc}"
    if state != v.enums.IBV_PORT_ACTIVE:
        return f"RDMA device {device} port 1 is not active (state {state})"
    return None


class _VerbsRegion(Region):
    def __init__(self, array: np.ndarray, mr: Any, descriptor: dict[str, Any],
                 owner: PyverbsTransport) -> None:
        super().__init__(array.data, descriptor, owner)
        self.array = array
        self.mr = mr
        self.addr = int(array.ctypes.data)


class _VerbsRemote(RemoteRegion):
    def __init__(self, descriptor: dict[str, Any], link: str, addr: int, rkey: int, size: int,
                 owner: PyverbsTransport) -> None:
        super().__init__(descriptor, size, owner)
        self.link = link
        self.addr = addr
        self.rkey = rkey


class _Link:
    """One connected RC QP to one peer transport."""

    def __init__(self, name: str, qp: Any) -> None:
        self.name = name
        self.qp = qp
        self.broken: str | None = None


class _VerbsCompletion(PolledCompletion):
    def __init__(self, transport: PyverbsTransport, wr_ids: list[int], what: str) -> None:
        super().__init__(what)
        self._transport = transport
        self._wr_ids = wr_ids

    def _poll(self) -> bool:
        failure = self._transport._collect(self._wr_ids)
        if failure is None:
            return False
        if failure:
            raise TransportError(f"{self._what} failed: {failure}")
        return True


class PyverbsTransport(Transport):
    """RDMA WRITE/READ over RC queue pairs; needs an RDMA NIC and a matching pyverbs."""

    name = "pyverbs"

    def __init__(self, bind_host: str = "127.0.0.1", *, advertise_host: str | None = None,
                 device: str | None = None, port: int = 1, gid_index: int | None = None,
                 queue_depth: int = 128) -> None:
        device = pick_device(device)
        v = _load()
        if queue_depth < 1:
            raise ValueError(f"queue_depth must be >= 1, got {queue_depth}")
        super().__init__()
        self._v = v
        self._bind_host = bind_host
        self._advertise_host = advertise_host or advertised_host(bind_host)
        self._instance = secrets.token_hex(8)
        self._lock = threading.Lock()
        self._connect_lock = threading.Lock()
        self._cq_lock = threading.Lock()
        self._port = port
        self._gid_index = (gid_index if gid_index is not None
                           else int(os.environ.get("DUALPATH_RDMA_GID_INDEX", "0")))
        self._depth = queue_depth
        self._slots = threading.Semaphore(queue_depth)
        self._ids = itertools.count(1)
        self._results: dict[int, str] = {}
        self._posted: dict[int, _Link] = {}
        self._regions: list[_VerbsRegion] = []
        self._links: dict[str, _Link] = {}
        self._served: list[Any] = []
        self._listener: socket.socket | None = None
        self._listen_thread: threading.Thread | None = None
        try:
            self._open_device(device)
        except Exception as exc:
            self.close()
            raise TransportUnavailable(f"cannot use RDMA device {device}: {exc}") from exc

    def _open_device(self, device: str) -> None:
        v = self._v
        self._ctx = v.device.Context(name=device)
        self._pd = v.pd.PD(self._ctx)
        # Only send completions land here (nothing is posted to receive
        # queues), and _slots bounds them to queue_depth at a time.
        self._cq = v.cq.CQ(self._ctx, 2 * self._depth)
        self._port_attr = self._ctx.query_port(self._port)
        if self._port_attr.state != v.enums.IBV_PORT_ACTIVE:
            raise TransportError(f"port {self._port} is not active")
        self._gid = str(self._ctx.query_gid(self._port, self._gid_index))
        max_rd = self._ctx.query_device().max_qp_rd_atom
        self._rd_atomic = max(1, min(16, max_rd))
        self._max_message = min(_MAX_MESSAGE, int(self._port_attr.max_msg_sz) or _MAX_MESSAGE)
        self._ethernet = self._port_attr.link_layer == v.enums.IBV_LINK_LAYER_ETHERNET

    # -- regions --------------------------------------------------------------

    def register(self, size: int) -> Region:
        size = check_size(size)
        e = self._v.enums
        access = (e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE
                  | e.IBV_ACCESS_REMOTE_READ)
        array = np.zeros(size, dtype=np.uint8)
        with self._lock:
            self._check_open()
            self._ensure_listener()
            assert self._listener is not None
            try:
                mr = self._v.mr.MR(self._pd, size, access, address=int(array.ctypes.data))
            except Exception as exc:
                raise TransportError(f"cannot register {size} bytes with the NIC: {exc}") from exc
            descriptor = {"transport": "pyverbs", "host": self._advertise_host,
                          "port": self._listener.getsockname()[1], "instance": self._instance,
                          "addr": int(array.ctypes.data), "rkey": int(mr.rkey), "size": size}
            region = _VerbsRegion(array, mr, descriptor, self)
            self._regions.append(region)
        return region

    # -- queue pairs ------------------------------------------------------------

    def _new_qp(self) -> Any:
        v = self._v
        e = v.enums
        cap = v.qp.QPCap(max_send_wr=self._depth, max_recv_wr=1, max_send_sge=1,
                         max_recv_sge=1)
        init = v.qp.QPInitAttr(qp_type=e.IBV_QPT_RC, scq=self._cq, rcq=self._cq, cap=cap,
                               sq_sig_all=1)
        qp = v.qp.QP(self._pd, init)
        attr = v.qp.QPAttr(port_num=self._port)
        attr.qp_access_flags = (e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE
                                | e.IBV_ACCESS_REMOTE_READ)
        qp.to_init(attr)
        return qp

    def _local_info(self, qp: Any, psn: int) -> dict[str, Any]:
        return {"qp_num": int(qp.qp_num), "lid": int(self._port_attr.lid), "gid": self._gid,
                "psn": psn}

    def _to_rts(self, qp: Any, peer: dict[str, Any], psn: int) -> None:
        """Move an INIT QP to RTS, connected to the peer QP described by ``peer``."""
        v = self._v
        attr = v.qp.QPAttr(port_num=self._port, path_mtu=self._port_attr.active_mtu)
        attr.qp_access_flags = (v.enums.IBV_ACCESS_LOCAL_WRITE
                                | v.enums.IBV_ACCESS_REMOTE_WRITE
                                | v.enums.IBV_ACCESS_REMOTE_READ)
        attr.dest_qp_num = int(peer["qp_num"])
        attr.rq_psn = int(peer["psn"])
        attr.max_dest_rd_atomic = self._rd_atomic
        attr.min_rnr_timer = 12
        # RoCE has no LIDs: route by GID. InfiniBand routes by LID within a subnet.
        use_grh = self._ethernet or int(peer["lid"]) == 0
        route = (v.addr.GlobalRoute(dgid=v.addr.GID(str(peer["gid"])), sgid_index=self._gid_index)
                 if use_grh else None)
        attr.ah_attr = v.addr.AHAttr(port_num=self._port, dlid=int(peer["lid"]),
                                     is_global=1 if use_grh else 0, gr=route)
        qp.to_rtr(attr)
        attr.timeout = 14
        attr.retry_cnt = 7
        attr.rnr_retry = 7
        attr.sq_psn = psn
        attr.max_rd_atomic = self._rd_atomic
        qp.to_rts(attr)

    # -- side channel (owner) ---------------------------------------------------

    def _ensure_listener(self) -> None:
        if self._listener is not None:
            return
        try:
            self._listener = socket.create_server((self._bind_host, 0))
        except OSError as exc:
            raise TransportError(f"cannot listen on {self._bind_host}: {exc}") from exc
        self._listen_thread = threading.Thread(target=self._accept_loop, daemon=True,
                                               name="dualpath-verbs-handshake")
        self._listen_thread.start()

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed
            with conn:
                conn.settimeout(_HANDSHAKE_TIMEOUT)
                try:
                    self._answer_handshake(conn)
                except Exception as exc:
                    with contextlib.suppress(OSError):
                        conn.sendall(json.dumps({"error": str(exc)}).encode() + b"\n")

    def _answer_handshake(self, conn: socket.socket) -> None:
        peer = _read_json_line(conn)
        if peer.get("instance") != self._instance:
            raise TransportError("descriptor is stale: it names another transport instance")
        qp = self._new_qp()
        psn = secrets.randbits(24)
        self._to_rts(qp, peer, psn)
        with self._lock:
            if self._closed:
                qp.close()
                raise TransportError("transport is closing")
            self._served.append(qp)
        conn.sendall(json.dumps(self._local_info(qp, psn)).encode() + b"\n")

    # -- connect (client) -------------------------------------------------------

    def connect(self, descriptor: dict[str, Any]) -> RemoteRegion:
        host = descriptor_field(descriptor, "pyverbs", "host", str)
        port = descriptor_field(descriptor, "pyverbs", "port", int)
        instance = descriptor_field(descriptor, "pyverbs", "instance", str)
        addr = descriptor_field(descriptor, "pyverbs", "addr", int)
        rkey = descriptor_field(descriptor, "pyverbs", "rkey", int)
        size = check_size(descriptor_field(descriptor, "pyverbs", "size", int))
        name = f"{host}:{port}/{instance}"
        # Not under self._lock: connecting to this very transport's own regions
        # needs our listener thread, which takes self._lock to answer.
        with self._connect_lock:
            self._check_open()
            link = self._links.get(name)
            if link is None or link.broken:
                link = _Link(name, self._handshake(host, port, instance))
                with self._lock:
                    self._links[name] = link
        return _VerbsRemote(dict(descriptor), name, addr, rkey, size, self)

    def _handshake(self, host: str, port: int, instance: str) -> Any:
        qp = self._new_qp()
        psn = secrets.randbits(24)
        hello = dict(self._local_info(qp, psn), instance=instance)
        try:
            with socket.create_connection((host, port), timeout=_HANDSHAKE_TIMEOUT) as conn:
                conn.sendall(json.dumps(hello).encode() + b"\n")
                peer = _read_json_line(conn)
            if "error" in peer:
                raise TransportError(f"peer {host}:{port} refused the QP handshake: "
                                     f"{peer['error']}")
            self._to_rts(qp, peer, psn)
        except Exception as exc:
            qp.close()
            if isinstance(exc, TransportError):
                raise
            raise TransportError(f"QP handshake with {host}:{port} failed: {exc}") from exc
        return qp

    # -- data path --------------------------------------------------------------

    def _post(self, opcode: int, local: _VerbsRegion, local_offset: int, remote: _VerbsRemote,
              remote_offset: int, nbytes: int, what: str) -> Completion:
        v = self._v
        with self._lock:
            self._check_open()
            link = self._links.get(remote.link)
        if link is None or link.broken:
            reason = link.broken if link is not None else "not connected"
            raise TransportError(f"{what}: link {remote.link} unusable ({reason}); "
                                 f"connect() again")
        wr_ids: list[int] = []
        for start in range(0, nbytes, self._max_message):
            length = min(self._max_message, nbytes - start)
            wr_id = next(self._ids)
            sge = v.wr.SGE(local.addr + local_offset + start, length, local.mr.lkey)
            wr = v.wr.SendWR(wr_id=wr_id, opcode=opcode, num_sge=1, sg=[sge],
                             send_flags=v.enums.IBV_SEND_SIGNALED)
            wr.set_wr_rdma(remote.rkey, remote.addr + remote_offset + start)
            self._take_slot()
            self._posted[wr_id] = link
            try:
                link.qp.post_send(wr)
            except Exception as exc:
                self._posted.pop(wr_id, None)
                self._slots.release()
                link.broken = f"post_send failed: {exc}"
                raise TransportError(f"{what} could not be posted: {exc}") from exc
            wr_ids.append(wr_id)
        return _VerbsCompletion(self, wr_ids, what)

    def _take_slot(self) -> None:
        # The send queue is full: reap completions ourselves to free a slot.
        while not self._slots.acquire(timeout=0.0005):
            self._reap()

    def _reap(self) -> None:
        """Poll the CQ once (if no other thread is) and file the results by wr_id."""
        if not self._cq_lock.acquire(blocking=False):
            return
        try:
            _, completions = self._cq.poll(num_entries=64)
        except Exception as exc:
            raise TransportError(f"polling the completion queue failed: {exc}") from exc
        finally:
            self._cq_lock.release()
        success = self._v.enums.IBV_WC_SUCCESS
        for wc in completions:
            link = self._posted.pop(wc.wr_id, None)
            if wc.status == success:
                self._results[wc.wr_id] = ""
            else:
                failure = f"work completion status {wc.status} (vendor error {wc.vendor_err})"
                self._results[wc.wr_id] = failure
                if link is not None:
                    # A failed WR moves the QP to the error state: every later
                    # one on it would be flushed, so the link is done for.
                    link.broken = failure
            self._slots.release()

    def _collect(self, wr_ids: list[int]) -> str | None:
        """None while any of ``wr_ids`` is outstanding, else "" or the first failure."""
        if any(wr_id not in self._results for wr_id in wr_ids):
            self._reap()
            if any(wr_id not in self._results for wr_id in wr_ids):
                return None
        outcomes = [self._results.pop(wr_id) for wr_id in wr_ids]
        return next((failure for failure in outcomes if failure), "")

    def _write(self, src: _VerbsRegion, src_offset: int, dst: _VerbsRemote, dst_offset: int,
               nbytes: int) -> Completion:
        return self._post(self._v.enums.IBV_WR_RDMA_WRITE, src, src_offset, dst, dst_offset,
                          nbytes, f"RDMA write of {nbytes} B to {dst.link}")

    def _read(self, dst: _VerbsRegion, dst_offset: int, src: _VerbsRemote, src_offset: int,
              nbytes: int) -> Completion:
        return self._post(self._v.enums.IBV_WR_RDMA_READ, dst, dst_offset, src, src_offset,
                          nbytes, f"RDMA read of {nbytes} B from {src.link}")

    # -- teardown -----------------------------------------------------------------

    def _shutdown(self) -> None:
        lock = getattr(self, "_lock", None) or threading.Lock()
        with lock:
            listener, self._listener = getattr(self, "_listener", None), None
            links, self._links = list(getattr(self, "_links", {}).values()), {}
            served, self._served = list(getattr(self, "_served", [])), []
            regions, self._regions = list(getattr(self, "_regions", [])), []
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        thread = getattr(self, "_listen_thread", None)
        if thread is not None:
            thread.join(timeout=5)
        # Children before parents: QPs, then MRs, then the CQ, PD and context.
        objects = [link.qp for link in links] + served + [region.mr for region in regions]
        objects += [getattr(self, name, None) for name in ("_cq", "_pd", "_ctx")]
        for obj in objects:
            if obj is not None:
                with contextlib.suppress(Exception):
                    obj.close()


def _read_json_line(conn: socket.socket) -> dict[str, Any]:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(_HANDSHAKE_LIMIT)
        if not chunk:
            raise ConnectionError("side channel closed before a full message")
        data += chunk
        if len(data) > _HANDSHAKE_LIMIT:
            raise ConnectionError("side-channel message too long")
    message = json.loads(data)
    if not isinstance(message, dict):
        raise ConnectionError("side-channel message is not a JSON object")
    return message

