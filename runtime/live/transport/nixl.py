"""NIXL transport: one-sided READ/WRITE through a NIXL agent over UCX.

Each transport owns one ``nixl_agent`` with the UCX backend and its progress
thread, which serves peers' one-sided operations without the application's
help. A region's descriptor carries the agent's metadata (base64), so a peer
can ``add_remote_agent`` and address the region by its virtual address. NIXL
runs without a GPU: regions are DRAM buffers.

Install (optional extra, after torch: the wheel depends on torch and, were
torch not there yet, would pull a CUDA build of it)::

    pip install "torch==<the pinned version>"
    pip install nixl-cu13            # what the "nixl" extra installs
    pip install --no-deps nixl       # optional: the "import nixl" meta package

The ``nixl`` meta package depends on both ``nixl-cu12`` and ``nixl-cu13``;
``--no-deps`` spares the unused one (about 300 MB). This module does not need
the meta package: it imports the backend wheel (``nixl_cu13``, else
``nixl_cu12``) directly, which also skips the meta package's import of torch
(about 2 s), and falls back to ``nixl`` itself.

UCX settings: when the host has no RDMA device and the environment does not
say otherwise, ``UCX_TLS`` defaults to ``tcp,sm,self`` (shared memory between
processes of one host, TCP between hosts) and ``UCX_MODULES`` to ``^ib*``
(UCX processes crash at exit when Debian's ``ibverbs-providers`` is installed
and its modules load without a device). ``NIXL_LOG_LEVEL`` defaults to
``WARN``: NIXL logs its INFO lines to stdout.
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import os
import secrets
import threading
from functools import lru_cache
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
    check_size,
    descriptor_field,
)
from runtime.live.transport.pyverbs import rdma_devices

_API_MODULES = ("nixl_cu13._api", "nixl_cu12._api", "nixl._api")
INSTALL_HINT = ("optional extra: pip install nixl-cu13 (after torch), then optionally "
                "pip install --no-deps nixl")


def prepare_environment() -> None:
    """Default the UCX/NIXL environment for hosts without RDMA (see the module doc)."""
    if not rdma_devices():
        os.environ.setdefault("UCX_TLS", "tcp,sm,self")
        os.environ.setdefault("UCX_MODULES", "^ib*")
    os.environ.setdefault("NIXL_LOG_LEVEL", "WARN")


def load_api() -> Any:
    """The ``nixl._api`` module of whichever NIXL wheel is installed."""
    prepare_environment()
    problems = []
    for name in _API_MODULES:
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            problems.append(f"{name}: {exc}")
    raise TransportUnavailable(f"nixl not installed ({INSTALL_HINT}); tried "
                               + "; ".join(problems))


class _NixlRegion(Region):
    def __init__(self, array: np.ndarray, registration: Any, descriptor: dict[str, Any],
                 owner: NixlTransport) -> None:
        super().__init__(array.data, descriptor, owner)
        self.array = array
        self.addr = int(array.ctypes.data)
        self.registration = registration


class _NixlRemote(RemoteRegion):
    def __init__(self, descriptor: dict[str, Any], agent: str, addr: int, size: int,
                 owner: NixlTransport) -> None:
        super().__init__(descriptor, size, owner)
        self.agent = agent
        self.addr = addr


class _NixlCompletion(PolledCompletion):
    def __init__(self, agent: Any, handle: Any, what: str) -> None:
        super().__init__(what)
        self._agent = agent
        self._handle: Any = handle

    def _poll(self) -> bool:
        try:
            state = self._agent.check_xfer_state(self._handle)
        except Exception as exc:
            self._release()
            raise TransportError(f"{self._what} failed: {exc}") from exc
        if state == "PROC":
            return False
        self._release()
        if state != "DONE":
            raise TransportError(f"{self._what} failed: NIXL reported {state}")
        return True

    def _release(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            # The transfer finished or failed: a refusal here leaves nothing to free.
            with contextlib.suppress(Exception):
                self._agent.release_xfer_handle(handle)


class NixlTransport(Transport):
    """One-sided DRAM transfers between NIXL agents (UCX backend)."""

    name = "nixl"

    def __init__(self) -> None:
        api = load_api()
        super().__init__()
        self._agent_name = f"dualpath-{os.getpid()}-{secrets.token_hex(4)}"
        config = api.nixl_agent_config(
            enable_prog_thread=True, backends=["UCX"],
            # Callers post from a thread pool: let NIXL serialise inside the agent.
            sync_mode=api.nixl_thread_sync_t.NIXL_THREAD_SYNC_STRICT)
        try:
            self._agent = api.nixl_agent(self._agent_name, config)
        except Exception as exc:
            self.close()
            raise TransportUnavailable(f"cannot start a NIXL agent: {exc}") from exc
        if "UCX" not in self._agent.backends:
            self.close()
            raise TransportUnavailable("NIXL's UCX backend did not load (plugins found: "
                                       f"{', '.join(self._agent.get_plugin_list()) or 'none'})")
        self._lock = threading.Lock()
        self._regions: list[_NixlRegion] = []
        self._generation = 0
        # Per peer agent, the newest metadata generation loaded: the metadata
        # of generation g covers every region the peer registered up to g.
        self._peers: dict[str, int] = {}

    def register(self, size: int) -> Region:
        size = check_size(size)
        array = np.zeros(size, dtype=np.uint8)
        with self._lock:
            self._check_open()
            try:
                registration = self._agent.register_memory(
                    [(int(array.ctypes.data), size, 0, "")], "DRAM")
                metadata = self._agent.get_agent_metadata()
            except Exception as exc:
                raise TransportError(f"NIXL could not register {size} bytes: {exc}") from exc
            self._generation += 1
            descriptor = {"transport": "nixl", "agent": self._agent_name,
                          "generation": self._generation,
                          "metadata": base64.b64encode(metadata).decode("ascii"),
                          "addr": int(array.ctypes.data), "size": size}
            region = _NixlRegion(array, registration, descriptor, self)
            self._regions.append(region)
        return region

    def connect(self, descriptor: dict[str, Any]) -> RemoteRegion:
        agent = descriptor_field(descriptor, "nixl", "agent", str)
        generation = descriptor_field(descriptor, "nixl", "generation", int)
        metadata = descriptor_field(descriptor, "nixl", "metadata", str)
        addr = descriptor_field(descriptor, "nixl", "addr", int)
        size = check_size(descriptor_field(descriptor, "nixl", "size", int))
        with self._lock:
            self._check_open()
            if agent != self._agent_name and self._peers.get(agent, 0) < generation:
                self._load_peer(agent, metadata)
                self._peers[agent] = generation
        return _NixlRemote(dict(descriptor), agent, addr, size, self)

    def _load_peer(self, agent: str, metadata: str) -> None:
        try:
            loaded = self._agent.add_remote_agent(base64.b64decode(metadata))
        except Exception as exc:
            raise TransportError(f"NIXL could not load peer agent {agent!r}: {exc}") from exc
        if isinstance(loaded, bytes):
            loaded = loaded.decode()
        if loaded != agent:
            raise TransportError(f"descriptor names agent {agent!r} but its metadata is "
                                 f"{loaded!r}'s")

    def _transfer(self, op: str, local: _NixlRegion, local_offset: int, remote: _NixlRemote,
                  remote_offset: int, nbytes: int) -> Completion:
        what = f"nixl {op} of {nbytes} B with agent {remote.agent}"
        agent = self._agent
        try:
            local_descs = agent.get_xfer_descs([(local.addr + local_offset, nbytes, 0)], "DRAM")
            remote_descs = agent.get_xfer_descs([(remote.addr + remote_offset, nbytes, 0)],
                                                "DRAM")
            handle = agent.initialize_xfer(op, local_descs, remote_descs, remote.agent)
        except Exception as exc:
            raise TransportError(f"{what} could not start: {exc}") from exc
        completion = _NixlCompletion(agent, handle, what)
        try:
            state = agent.transfer(handle)
        except Exception as exc:
            completion._release()
            raise TransportError(f"{what} could not be posted: {exc}") from exc
        if state == "ERR":
            completion._release()
            raise TransportError(f"{what} could not be posted: NIXL reported ERR")
        return completion

    def _write(self, src: _NixlRegion, src_offset: int, dst: _NixlRemote, dst_offset: int,
               nbytes: int) -> Completion:
        return self._transfer("WRITE", src, src_offset, dst, dst_offset, nbytes)

    def _read(self, dst: _NixlRegion, dst_offset: int, src: _NixlRemote, src_offset: int,
              nbytes: int) -> Completion:
        return self._transfer("READ", dst, dst_offset, src, src_offset, nbytes)

    def _shutdown(self) -> None:
        agent = getattr(self, "_agent", None)
        if agent is None:
            return
        lock = getattr(self, "_lock", None) or threading.Lock()
        with lock:
            regions, self._regions = self._regions, []
            peers, self._peers = list(self._peers), {}
        # Best effort: the agent is torn down next, which frees all of it anyway.
        for peer in peers:
            with contextlib.suppress(Exception):
                agent.remove_remote_agent(peer)
        for region in regions:
            with contextlib.suppress(Exception):
                agent.deregister_memory(region.registration)
        # Dropping the last reference destroys the agent and stops its threads.
        self._agent = None


@lru_cache(maxsize=1)
def probe() -> str | None:
    """None when a NIXL agent with the UCX backend starts here, else why not (cached)."""
    try:
        transport = NixlTransport()
    except TransportUnavailable as exc:
        return str(exc)
    transport.close()
    return None
