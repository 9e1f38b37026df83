"""The fabric: build, shape, use and tear down one emulated cluster's namespaces."""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from runtime.errors import require
from runtime.live.netns.addressing import (
    address,
    free_mgmt_subnet,
    node_ip_lines,
    tbf_line,
)
from runtime.live.netns.commands import (
    delete_netns,
    kill_netns_pids,
    list_netns,
    list_root_links,
    run_batch,
    run_cmd,
)
from runtime.live.netns.links import (
    COMPUTE_NET,
    MAX_NODES,
    MTU,
    STORAGE_NET,
    SYSCTLS,
    HostAddr,
    NetnsError,
    NodeLinks,
    is_rate,
)
from runtime.live.netns.ownership import check_root, start_time, state_dir, state_lock, sweep_root

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- cleanup hooks

_LIVE: set[Fabric] = set()
_LIVE_LOCK = threading.RLock()  # re-entrant: the signal handler takes it too
_PREVIOUS: dict[int, Any] = {}
_HOOKED = False


def _close_all() -> None:
    """Close every fabric this process owns (forked children own none)."""
    with _LIVE_LOCK:
        fabrics = [fab for fab in _LIVE if fab._owner == os.getpid()]
    for fab in fabrics:
        try:
            fab.close()
        except Exception:  # at exit or on a signal: report it and go on with the rest
            log.exception("tearing down network namespaces of %s failed", fab.run_id)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """Tear down, then do what the signal did before: raise KeyboardInterrupt or die."""
    _close_all()
    previous = _PREVIOUS.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
        return
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_hooks() -> None:
    """Register atexit once; take SIGTERM/SIGINT only where they have default behaviour."""
    global _HOOKED
    if _HOOKED:
        return
    _HOOKED = True
    atexit.register(_close_all)
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread
    defaults = {signal.SIGTERM: (signal.SIG_DFL,),
                signal.SIGINT: (signal.SIG_DFL, signal.default_int_handler)}
    for signum, plain in defaults.items():
        previous = signal.getsignal(signum)
        if any(previous is p for p in plain):
            _PREVIOUS[signum] = previous
            signal.signal(signum, _on_signal)


# ---------------------------------------------------------------- the fabric


class Fabric:
    """An emulated cluster in network namespaces; use as a context manager.

    ``nodes`` gives each node's link rates; ``storage_bytes_s`` caps the storage
    service's own link (each direction; None: only the nodes' SNICs limit it).
    ``prefix`` is the name root (1-4 lowercase letters, default ``dp``); the run's
    names are ``{prefix}{pid}-{sid}-...`` so :func:`sweep_stale` can tell a dead
    run's leftovers from a live one's.

    Processes started with :meth:`popen` should be terminated by the caller
    before ``close``; ``close`` kills any still running, and any other process
    left inside the namespaces.
    """

    def __init__(self, nodes: Sequence[NodeLinks], *, storage_bytes_s: float | None = None,
                 prefix: str | None = None) -> None:
        links = tuple(nodes)
        require(0 < len(links) <= MAX_NODES, "nodes",
                f"must hold 1..{MAX_NODES} nodes, got {len(links)}")
        ids = [n.node_id for n in links]
        require(len(set(ids)) == len(ids), "nodes", f"node ids must be unique, got {ids}")
        require(storage_bytes_s is None or is_rate(storage_bytes_s), "storage_bytes_s",
                f"must be None or a finite rate > 0, got {storage_bytes_s}")
        self._root = "dp" if prefix is None else prefix
        check_root(self._root)
        self._links = links
        self._storage_bytes_s = storage_bytes_s
        self._owner = os.getpid()
        self._state = "new"
        self._run_id = ""
        self._mgmt: ipaddress.IPv4Network | None = None
        self._namespaces: list[str] = []
        self._nodes: dict[int, HostAddr] = {}
        self._storage: HostAddr | None = None
        self._procs: list[subprocess.Popen[Any]] = []

    # -- public view

    @property
    def run_id(self) -> str:
        """``{prefix}{pid}-{sid}``: every namespace name starts with it; the root link is it."""
        return self._run_id

    @property
    def nodes(self) -> dict[int, HostAddr]:
        """Each node's host, by node id."""
        self._require_built()
        return dict(self._nodes)

    @property
    def storage(self) -> HostAddr:
        """The storage service's host (no compute addresses)."""
        self._require_built()
        assert self._storage is not None
        return self._storage

    @property
    def router_ip(self) -> str:
        """The root namespace's management address (bind the control plane here or to 0.0.0.0)."""
        self._require_built()
        return self._mgmt_ip(1)

    def _mgmt_ip(self, offset: int) -> str:
        assert self._mgmt is not None
        return str(self._mgmt.network_address + offset)

    @property
    def namespaces(self) -> tuple[str, ...]:
        """Every namespace of the run: the switches', the storage service's, the nodes'."""
        return tuple(self._namespaces)

    @property
    def _storage_ns(self) -> str:
        return f"{self._run_id}-st"

    def _require_built(self) -> None:
        if self._state != "open":
            raise NetnsError(f"the fabric is {self._state}; use it inside `with Fabric(...)`")

    # -- lifecycle

    def __enter__(self) -> Fabric:
        if self._state != "new":
            raise NetnsError(f"a Fabric is built once; this one is {self._state}")
        self._state = "building"
        with _LIVE_LOCK:
            _LIVE.add(self)
        _install_hooks()
        try:
            with state_lock():
                sweep_root(self._root)
                self._plan()
                self._write_record()
                self._build()
        except BaseException as exc:
            self._teardown()
            self._state = "failed"
            if isinstance(exc, NetnsError | KeyboardInterrupt | SystemExit):
                raise
            raise NetnsError(f"building the fabric failed: {exc!r}") from exc
        self._state = "open"
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove everything; idempotent. Raises NetnsError if something would not go."""
        if self._state in ("new", "closed", "failed"):
            return
        leftovers = self._teardown()
        self._state = "closed"
        if leftovers:
            raise NetnsError(f"could not remove {', '.join(leftovers)}")

    def popen(self, host: HostAddr, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``host``'s namespace (``ip netns exec``); kwargs go to Popen.

        The process's pid is that of ``argv`` itself (``ip`` execs it). Terminate
        it before :meth:`close`; close kills what is still running.
        """
        self._require_built()
        if host.netns not in self._namespaces:
            raise NetnsError(f"{host.netns} is not a host of fabric {self._run_id}")
        proc = subprocess.Popen(["ip", "netns", "exec", host.netns, *argv], **kwargs)
        self._procs.append(proc)
        return proc

    # -- building

    def _plan(self) -> None:
        """Pick the run's names and management /24 and lay out every host's addresses."""
        present = set(list_netns()) | set(list_root_links())
        while True:
            run = f"{self._root}{os.getpid()}-{secrets.token_hex(2)[:3]}"
            if not any(name.startswith(run) for name in present):
                break
        self._run_id = run
        self._mgmt = free_mgmt_subnet()
        self._storage = HostAddr(f"{run}-st", self._mgmt_ip(2), address(STORAGE_NET, 1), ())
        for i, links in enumerate(self._links):
            self._nodes[links.node_id] = HostAddr(
                netns=f"{run}-n{links.node_id}",
                mgmt_ip=self._mgmt_ip(i + 3),
                storage_ip=address(STORAGE_NET, (i + 1) * 256 + 1),
                compute_ips=tuple(address(COMPUTE_NET, (i + 1) * 256 + j + 1)
                                  for j in range(len(links.cnic_bytes_s))),
            )
        self._namespaces = [f"{run}-fab", self._storage.netns,
                            *(host.netns for host in self._nodes.values())]

    def _write_record(self) -> None:
        record = {"pid": self._owner, "start": start_time(self._owner),
                  "namespaces": self._namespaces, "link": self._run_id}
        (state_dir() / f"{self._run_id}.json").write_text(json.dumps(record))

    def _build(self) -> None:
        run_batch(["ip"], [f"netns add {ns}" for ns in self._namespaces])
        script = "; ".join(f"if [ -e /proc/sys/{key} ]; then echo {value} > /proc/sys/{key}; fi"
                           for key, value in SYSCTLS)
        for ns in self._namespaces:
            run_cmd(["ip", "netns", "exec", ns, "sh", "-ec", script])
        run_batch(["ip"], self._veth_lines())
        with contextlib.suppress(OSError):  # no IPv6 chatter onto the management bridge
            Path(f"/proc/sys/net/ipv6/conf/{self._run_id}/disable_ipv6").write_text("1")
        run_batch(["ip"], [f"link set dev {self._run_id} up"])
        for ns, lines in self._ip_lines().items():
            run_batch(["ip", "-n", ns], lines)
        for ns, lines in self._tc_lines().items():
            run_batch(["tc", "-n", ns], lines)

    def _veth_lines(self) -> list[str]:
        """Root-context ``ip`` lines creating every veth pair straight into its namespaces."""
        fab = f"{self._run_id}-fab"
        st = self._storage_ns

        def pair(port: str, ns: str, dev: str, mtu: int = MTU) -> str:
            return (f"link add name {port} netns {fab} mtu {mtu} type veth "
                    f"peer name {dev} netns {ns} mtu {mtu}")

        lines = [f"link add name {self._run_id} type veth peer name root netns {fab}",
                 f"addr add {self._mgmt_ip(1)}/24 dev {self._run_id}",
                 pair("sst", st, "snic"), pair("mst", st, "mgmt", 1500)]
        for links in self._links:
            k, ns = links.node_id, self._nodes[links.node_id].netns
            lines += [pair(f"s{k}", ns, "snic"), pair(f"m{k}", ns, "mgmt", 1500)]
            lines += [pair(f"c{k}e{j}", ns, f"cnic{j}") for j in range(len(links.cnic_bytes_s))]
        return lines

    def _ip_lines(self) -> dict[str, list[str]]:
        """Per-namespace ``ip`` lines: bridges in the fabric, addresses and routes in hosts."""
        fab = f"{self._run_id}-fab"
        ports = {"brs": ["sst"], "brc": [], "brm": ["mst", "root"]}
        for links in self._links:
            k = links.node_id
            ports["brs"].append(f"s{k}")
            ports["brm"].append(f"m{k}")
            ports["brc"] += [f"c{k}e{j}" for j in range(len(links.cnic_bytes_s))]
        lines = ["link set dev lo up"]
        for bridge, members in ports.items():
            lines += [f"link add name {bridge} type bridge stp_state 0",
                      f"link set dev {bridge} up"]
            for port in members:
                lines += [f"link set dev {port} master {bridge}", f"link set dev {port} up"]
        # Nodes reach the storage service over the storage network, not each other.
        lines += [f"link set dev s{n.node_id} type bridge_slave isolated on" for n in self._links]
        out = {fab: lines}
        storage = self._storage
        assert storage is not None
        out[storage.netns] = ["link set dev lo up", "link set dev snic up", "link set dev mgmt up",
                              f"addr add {storage.storage_ip}/16 dev snic",
                              f"addr add {storage.mgmt_ip}/24 dev mgmt"]
        for links in self._links:
            host = self._nodes[links.node_id]
            out[host.netns] = node_ip_lines(host)
        return out

    def _tc_lines(self) -> dict[str, list[str]]:
        """Per-namespace tc lines: every shaped link limited at both ends' egress."""
        fab = f"{self._run_id}-fab"
        out: dict[str, list[str]] = {fab: [], self._storage_ns: []}
        if self._storage_bytes_s is not None:
            out[self._storage_ns].append(tbf_line("snic", self._storage_bytes_s))
            out[fab].append(tbf_line("sst", self._storage_bytes_s))
        for links in self._links:
            k = links.node_id
            node = [tbf_line("snic", links.snic_bytes_s)]
            out[fab].append(tbf_line(f"s{k}", links.snic_bytes_s))
            for j, rate in enumerate(links.cnic_bytes_s):
                node.append(tbf_line(f"cnic{j}", rate))
                out[fab].append(tbf_line(f"c{k}e{j}", rate))
            out[self._nodes[k].netns] = node
        return out

    def set_snic_rate(self, node_id: int, payload_bytes_s: float) -> None:
        """Change node ``node_id``'s storage link to ``payload_bytes_s`` mid-run (both ends'
        ``tbf``, replaced in place: open connections stay up and slow down)."""
        self._require_built()
        if not is_rate(payload_bytes_s):
            raise ValueError(f"rate must be a finite number > 0, got {payload_bytes_s!r}")
        run_batch(["tc", "-n", self._nodes[node_id].netns], [tbf_line("snic", payload_bytes_s)])
        run_batch(["tc", "-n", f"{self._run_id}-fab"], [tbf_line(f"s{node_id}", payload_bytes_s)])

    # -- teardown

    def _teardown(self) -> list[str]:
        """Stop processes, delete links and namespaces; return what is still there."""
        with _LIVE_LOCK:
            _LIVE.discard(self)
        _stop(self._procs)
        if not self._run_id:
            return []
        kill_netns_pids(self._namespaces)
        try:
            delete_netns(self._namespaces, [self._run_id])
        except NetnsError as exc:
            log.warning("%s", exc)
        with contextlib.suppress(OSError, NetnsError):
            (state_dir() / f"{self._run_id}.json").unlink(missing_ok=True)
        left = [ns for ns in list_netns() if ns in self._namespaces]
        return left + [link for link in list_root_links() if link == self._run_id]


def _stop(procs: Sequence[subprocess.Popen[Any]], grace_s: float = 2.0) -> None:
    """Terminate processes still running; kill those still there after ``grace_s``."""
    alive = [p for p in procs if p.poll() is None]
    for proc in alive:
        with contextlib.suppress(OSError):
            proc.terminate()
    deadline = time.monotonic() + grace_s
    for proc in alive:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace_s)


def netns_available() -> str | None:
    """None if namespace fabrics can be built here, else why not."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "building network namespaces needs root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` (iproute2) is not installed"
    probe = f"dp{os.getpid()}-{secrets.token_hex(2)[:3]}-probe"
    try:
        run_cmd(["ip", "netns", "add", probe])
        try:
            run_batch(["ip", "-n", probe], ["link add name va type veth peer name vb",
                                         "link add name br type bridge",
                                         "link set dev va master br"])
            run_batch(["tc", "-n", probe], [tbf_line("vb", 1e6)])
        finally:
            run_cmd(["ip", "netns", "del", probe], check=False)
    except NetnsError as exc:
        return f"cannot build a test namespace: {exc}"
    return None
