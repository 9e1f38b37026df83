"""An emulated multi-host cluster: one network namespace per node and one for storage.

Topology (names are ``{run}-...`` where ``run`` is ``{root}{pid}-{sid}``, e.g.
``dp4711-a3f``; ``root`` defaults to ``dp``)::

    {run}-n{K}   node K: snic (storage net), cnic0..cnic{g-1} (compute net, one per
                 engine), mgmt (management net)
    {run}-st     the storage service: snic (storage net), mgmt
    {run}-fab    the switches: bridges brs (storage), brc (compute), brm (management);
                 its ports are s{K}/sst, c{K}e{j}, m{K}/mst and "root"
    root ns      one veth named {run} on the management bridge: the router/control
                 plane, running in the root namespace, reaches every host through it

Networks (each host's addresses are in its :class:`HostAddr`):

* storage 10.201.0.0/16: the storage service is 10.201.0.1, node i is 10.201.{i+1}.1.
  Node ports on the storage bridge are isolated, so nodes reach the storage service
  and never each other over it.
* compute 10.202.0.0/16: node i's engine j is 10.202.{i+1}.{j+1}.
* management: one /24 per fabric, the first of 10.203.0.0/16 (then 172.30.0.0/16)
  that the root namespace leaves free: the root namespace is .1
  (:attr:`Fabric.router_ip`), the storage service .2, node i .{i+3}. Unshaped,
  MTU 1500; carry control traffic here. Every host reaches every other host's
  and the root namespace's management address.

Storage and compute addresses exist only inside the run's namespaces, so they
never collide with the host's routes (or another fabric's); only the management
/24 is visible in the root namespace, and a /24 no root route overlaps is picked.

Routing keeps the networks apart: source-address rules send traffic *from* a
compute IP only out of that engine's CNIC and traffic from the storage IP only
out of the SNIC (anything else from them fails with EHOSTUNREACH), and the main
table has no compute route at all (unbound compute traffic: ENETUNREACH). So a
process must bind to its engine's compute IP for compute traffic
(``sock.bind((compute_ip, 0))`` before ``connect``); storage and management
traffic may leave unbound (the main table routes 10.201/16 via the SNIC and the
management /24 via mgmt). Separate bridges keep them apart on the wire too.

Storage and compute links use jumbo frames (:data:`MTU`). Shaping: each shaped
veth has a ``tbf`` qdisc on *both* ends, each limiting its own egress, so both
directions are limited: node->storage on the node's SNIC, storage->node on its
port of the storage bridge; the same for each CNIC; the storage service's own
rate (if given) on its SNIC and its bridge port. Rates are TCP payload rates:
tc is given the wire rate that carries that much payload in full-size segments
(see :data:`WIRE_BYTES_PER_PAYLOAD`).

Lifecycle: :class:`Fabric` builds everything in ``__enter__`` and removes it in
``close``, which also runs at interpreter exit and on SIGTERM/SIGINT (when the
process has no handler of its own for them). After a SIGKILL the leftovers stay
until :func:`sweep_stale` (also run by every ``Fabric.__enter__``) finds their
owner pid dead and removes them.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import ipaddress
import json
import logging
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from runtime.errors import require

log = logging.getLogger(__name__)

STORAGE_NET = ipaddress.IPv4Network("10.201.0.0/16")
COMPUTE_NET = ipaddress.IPv4Network("10.202.0.0/16")
# The management /24 is taken from the first of these that the root namespace
# leaves free (a host route such as 10.0.0.0/8 would cover the first).
MGMT_POOLS = (ipaddress.IPv4Network("10.203.0.0/16"), ipaddress.IPv4Network("172.30.0.0/16"))
MAX_NODES = 250  # node i's management address is .{i+3} of a /24
MAX_ENGINES = 250  # engine j's compute address is .{j+1}

# Jumbo frames: a sixth of the packets of MTU 1500, which matters on a small
# machine at a few hundred MB/s; shaping is as accurate.
MTU = 9000
# One full-size TCP segment carries MTU - 20 (IP) - 32 (TCP with timestamps)
# payload bytes in MTU + 14 (Ethernet) bytes, which is what tbf counts.
WIRE_BYTES_PER_PAYLOAD = (MTU + 14) / (MTU - 52)
# Bucket depth: 2 ms of traffic, but at least one frame (tbf drops a frame
# larger than its bucket) and at most 64 KiB, so a short transfer is shaped
# from its first bytes rather than passing in one burst.
BURST_S = 0.002
BURST_MIN_BYTES = MTU + 14
BURST_MAX_BYTES = 64 * 1024
# Queue beyond the bucket: 50 ms of traffic, at least 64 KiB; drops beyond it
# are what tells TCP to slow down on the forwarding (bridge) side.
QUEUE_S = 0.05
QUEUE_MIN_BYTES = 64 * 1024

_RULE_STORAGE = 200  # table and rule priority for traffic from the storage IP
_RULE_COMPUTE = 300  # + engine index, for traffic from that engine's compute IP
_ROOT_RE = re.compile(r"[a-z]{1,4}")
_SYSCTLS = (
    # IPv4 only: no IPv6 link-local addresses, DAD or router solicitations.
    ("net/ipv6/conf/all/disable_ipv6", "1"),
    ("net/ipv6/conf/default/disable_ipv6", "1"),
    # Several CNICs share one subnet in a node: answer ARP only on the
    # interface that holds the address and ask with that interface's address.
    ("net/ipv4/conf/all/arp_ignore", "1"),
    ("net/ipv4/conf/default/arp_ignore", "1"),
    ("net/ipv4/conf/all/arp_announce", "2"),
    ("net/ipv4/conf/default/arp_announce", "2"),
    ("net/ipv4/conf/all/rp_filter", "0"),
    ("net/ipv4/conf/default/rp_filter", "0"),
)


class NetnsError(RuntimeError):
    """Building or removing namespaces failed; ``cmd`` and ``stderr`` say how."""

    def __init__(self, message: str, cmd: str | None = None, stderr: str = "") -> None:
        detail = message
        if cmd:
            detail += f"\n  command: {cmd}"
        if stderr.strip():
            detail += f"\n  stderr: {stderr.strip()}"
        super().__init__(detail)
        self.cmd = cmd
        self.stderr = stderr


@dataclass(frozen=True)
class NodeLinks:
    """A node's links: its storage NIC and one compute NIC per engine.

    Rates are bytes per second of TCP payload, each direction.
    """

    node_id: int
    snic_bytes_s: float
    cnic_bytes_s: tuple[float, ...]

    def __post_init__(self) -> None:
        key = f"node[{self.node_id}]"
        require(self.node_id >= 0, f"{key}.node_id", f"must be >= 0, got {self.node_id}")
        require(_is_rate(self.snic_bytes_s), f"{key}.snic_bytes_s",
                f"must be a finite rate > 0, got {self.snic_bytes_s}")
        require(isinstance(self.cnic_bytes_s, tuple) and 0 < len(self.cnic_bytes_s) <= MAX_ENGINES,
                f"{key}.cnic_bytes_s",
                f"must be a tuple of 1..{MAX_ENGINES} rates (one per engine), "
                f"got {self.cnic_bytes_s!r}")
        for j, rate in enumerate(self.cnic_bytes_s):
            require(_is_rate(rate), f"{key}.cnic_bytes_s[{j}]",
                    f"must be a finite rate > 0, got {rate}")


@dataclass(frozen=True)
class HostAddr:
    """Where one emulated host lives and its addresses on each network."""

    netns: str
    mgmt_ip: str
    storage_ip: str
    compute_ips: tuple[str, ...]


def _is_rate(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


# ---------------------------------------------------------------- commands


def _run(argv: Sequence[str], *, input: str | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command; unless ``check`` is false, raise NetnsError if it fails."""
    try:
        done = subprocess.run(list(argv), input=input, capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"could not run: {exc}", " ".join(argv)) from exc
    if check and done.returncode != 0:
        raise NetnsError(f"command failed (exit {done.returncode})", " ".join(argv),
                         done.stderr)
    return done


def _batch(argv: Sequence[str], lines: Sequence[str]) -> None:
    """Run ``lines`` through ``ip``/``tc`` ``-batch``; name the failing line on error."""
    if not lines:
        return
    done = _run([*argv, "-batch", "-"], input="\n".join(lines) + "\n", check=False)
    if done.returncode == 0:
        return
    failed = re.search(r"Command failed -:(\d+)", done.stderr)
    line = lines[int(failed.group(1)) - 1] if failed else "-batch -"
    raise NetnsError(f"command failed (exit {done.returncode})",
                     " ".join([*argv, line]), done.stderr)


def _list_netns() -> list[str]:
    done = _run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def _list_root_links() -> list[str]:
    done = _run(["ip", "-o", "link", "show"], check=False)
    names = []
    for line in done.stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@")[0])
    return names


def _kill_netns_pids(namespaces: Sequence[str]) -> None:
    """SIGKILL every process still inside ``namespaces`` (they would keep them alive)."""
    for ns in namespaces:
        done = _run(["ip", "netns", "pids", ns], check=False)
        for token in done.stdout.split():
            if token.isdigit() and int(token) != os.getpid():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(token), signal.SIGKILL)


def _delete(namespaces: Sequence[str], links: Sequence[str]) -> None:
    """Delete root-namespace links, then namespaces; what is already gone is skipped."""
    present_links = set(_list_root_links())
    for link in links:
        if link in present_links:
            _run(["ip", "link", "del", "dev", link], check=False)
    present = set(_list_netns())
    _batch(["ip", "-force"], [f"netns del {ns}" for ns in namespaces if ns in present])


# ---------------------------------------------------------------- ownership


def _state_dir() -> Path:
    """Where run records and the build lock live (``/run`` when writable)."""
    for base in (Path("/run"), Path(tempfile.gettempdir())):
        path = base / "dualpath-netns"
        try:
            path.mkdir(mode=0o755, exist_ok=True)
        except OSError:
            continue
        if os.access(path, os.W_OK):
            return path
    raise NetnsError("no writable directory for the namespace state (/run or the tempdir)")


@contextlib.contextmanager
def _state_lock() -> Iterator[None]:
    """Serialise sweeping and picking names/subnets across processes."""
    fd = os.open(_state_dir() / "lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), or None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    if not fields or fields[0] in ("Z", "X"):
        return None
    return fields[19]


def _owner_alive(pid: int, run: str) -> bool:
    """Whether the run's owner still lives; a recorded start time catches pid reuse."""
    started = _start_time(pid)
    if started is None:
        return False
    recorded = _read_record(run).get("start")
    return recorded is None or recorded == started


def _read_record(run: str) -> dict[str, Any]:
    try:
        record = json.loads((_state_dir() / f"{run}.json").read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _name_re(root: str) -> re.Pattern[str]:
    return re.compile(rf"(?P<run>{re.escape(root)}(?P<pid>\d+)-[0-9a-z]{{3}})(?:-[0-9a-z]+)?")


def _check_root(root: str) -> None:
    require(_ROOT_RE.fullmatch(root) is not None, "prefix",
            f"must be 1-4 lowercase letters (names also carry the pid), got {root!r}")


def sweep_stale(prefix_root: str = "dp") -> list[str]:
    """Remove namespaces and root links of runs whose owner process is dead.

    Works from names alone (``{prefix_root}{pid}-{sid}...``), helped by the run
    records where they survive. Processes still inside a dead run's namespaces
    are killed. Returns the names of the links and namespaces removed.
    """
    _check_root(prefix_root)
    with _state_lock():
        return _sweep(prefix_root)


def _sweep(root: str) -> list[str]:
    pattern = _name_re(root)
    runs: dict[str, tuple[int, set[str], set[str]]] = {}

    def note(name: str, *, link: bool) -> None:
        match = pattern.fullmatch(name)
        if match is None or (link and match.group("run") != name):
            return
        _, namespaces, links = runs.setdefault(match.group("run"),
                                               (int(match.group("pid")), set(), set()))
        (links if link else namespaces).add(name)

    for ns in _list_netns():
        note(ns, link=False)
    for link in _list_root_links():
        note(link, link=True)
    state = _state_dir()
    for path in state.glob("*.json"):
        match = pattern.fullmatch(path.stem)
        if match and match.group("run") == path.stem:
            runs.setdefault(path.stem, (int(match.group("pid")), set(), set()))

    removed: list[str] = []
    for run, (pid, namespaces, links) in sorted(runs.items()):
        if _owner_alive(pid, run):
            continue
        _kill_netns_pids(sorted(namespaces))
        _delete(sorted(namespaces), sorted(links))
        (state / f"{run}.json").unlink(missing_ok=True)
        removed += sorted(links) + sorted(namespaces)
    return removed


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


def _tbf(dev: str, payload_bytes_s: float) -> str:
    """A tc batch line limiting ``dev``'s egress to ``payload_bytes_s`` of TCP payload."""
    wire = payload_bytes_s * WIRE_BYTES_PER_PAYLOAD
    burst = int(min(BURST_MAX_BYTES, max(BURST_MIN_BYTES, wire * BURST_S)))
    limit = burst + int(max(QUEUE_MIN_BYTES, wire * QUEUE_S))
    # tc's "bps" means bytes per second; "bit" is unambiguous.
    return (f"qdisc replace dev {dev} root tbf rate {max(8, round(wire * 8))}bit "
            f"burst {burst} limit {limit}")


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
        require(storage_bytes_s is None or _is_rate(storage_bytes_s), "storage_bytes_s",
                f"must be None or a finite rate > 0, got {storage_bytes_s}")
        self._root = "dp" if prefix is None else prefix
        _check_root(self._root)
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
            with _state_lock():
                _sweep(self._root)
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
        present = set(_list_netns()) | set(_list_root_links())
        while True:
            run = f"{self._root}{os.getpid()}-{secrets.token_hex(2)[:3]}"
            if not any(name.startswith(run) for name in present):
                break
        self._run_id = run
        self._mgmt = _free_mgmt_subnet()
        self._storage = HostAddr(f"{run}-st", self._mgmt_ip(2), _ip(STORAGE_NET, 1), ())
        for i, links in enumerate(self._links):
            self._nodes[links.node_id] = HostAddr(
                netns=f"{run}-n{links.node_id}",
                mgmt_ip=self._mgmt_ip(i + 3),
                storage_ip=_ip(STORAGE_NET, (i + 1) * 256 + 1),
                compute_ips=tuple(_ip(COMPUTE_NET, (i + 1) * 256 + j + 1)
                                  for j in range(len(links.cnic_bytes_s))),
            )
        self._namespaces = [f"{run}-fab", self._storage.netns,
                            *(host.netns for host in self._nodes.values())]

    def _write_record(self) -> None:
        record = {"pid": self._owner, "start": _start_time(self._owner),
                  "namespaces": self._namespaces, "link": self._run_id}
        (_state_dir() / f"{self._run_id}.json").write_text(json.dumps(record))

    def _build(self) -> None:
        _batch(["ip"], [f"netns add {ns}" for ns in self._namespaces])
        script = "; ".join(f"if [ -e /proc/sys/{key} ]; then echo {value} > /proc/sys/{key}; fi"
                           for key, value in _SYSCTLS)
        for ns in self._namespaces:
            _run(["ip", "netns", "exec", ns, "sh", "-ec", script])
        _batch(["ip"], self._veth_lines())
        with contextlib.suppress(OSError):  # no IPv6 chatter onto the management bridge
            Path(f"/proc/sys/net/ipv6/conf/{self._run_id}/disable_ipv6").write_text("1")
        _batch(["ip"], [f"link set dev {self._run_id} up"])
        for ns, lines in self._ip_lines().items():
            _batch(["ip", "-n", ns], lines)
        for ns, lines in self._tc_lines().items():
            _batch(["tc", "-n", ns], lines)

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
            out[host.netns] = _node_ip_lines(host)
        return out

    def _tc_lines(self) -> dict[str, list[str]]:
        """Per-namespace tc lines: every shaped link limited at both ends' egress."""
        fab = f"{self._run_id}-fab"
        out: dict[str, list[str]] = {fab: [], self._storage_ns: []}
        if self._storage_bytes_s is not None:
            out[self._storage_ns].append(_tbf("snic", self._storage_bytes_s))
            out[fab].append(_tbf("sst", self._storage_bytes_s))
        for links in self._links:
            k = links.node_id
            node = [_tbf("snic", links.snic_bytes_s)]
            out[fab].append(_tbf(f"s{k}", links.snic_bytes_s))
            for j, rate in enumerate(links.cnic_bytes_s):
                node.append(_tbf(f"cnic{j}", rate))
                out[fab].append(_tbf(f"c{k}e{j}", rate))
            out[self._nodes[k].netns] = node
        return out

    def set_snic_rate(self, node_id: int, payload_bytes_s: float) -> None:
        """Change node ``node_id``'s storage link to ``payload_bytes_s`` mid-run (both ends'
        ``tbf``, replaced in place: open connections stay up and slow down)."""
        self._require_built()
        if not _is_rate(payload_bytes_s):
            raise ValueError(f"rate must be a finite number > 0, got {payload_bytes_s!r}")
        _batch(["tc", "-n", self._nodes[node_id].netns], [_tbf("snic", payload_bytes_s)])
        _batch(["tc", "-n", f"{self._run_id}-fab"], [_tbf(f"s{node_id}", payload_bytes_s)])

    # -- teardown

    def _teardown(self) -> list[str]:
        """Stop processes, delete links and namespaces; return what is still there."""
        with _LIVE_LOCK:
            _LIVE.discard(self)
        _stop(self._procs)
        if not self._run_id:
            return []
        _kill_netns_pids(self._namespaces)
        try:
            _delete(self._namespaces, [self._run_id])
        except NetnsError as exc:
            log.warning("%s", exc)
        with contextlib.suppress(OSError, NetnsError):
            (_state_dir() / f"{self._run_id}.json").unlink(missing_ok=True)
        left = [ns for ns in _list_netns() if ns in self._namespaces]
        return left + [link for link in _list_root_links() if link == self._run_id]


def _node_ip_lines(host: HostAddr) -> list[str]:
    """A node's addresses, with source rules pinning each address to its own NIC."""
    lines = ["link set dev lo up", "link set dev snic up", "link set dev mgmt up",
             f"addr add {host.storage_ip}/16 dev snic",
             f"addr add {host.mgmt_ip}/24 dev mgmt",
             f"route add {STORAGE_NET} dev snic src {host.storage_ip} table {_RULE_STORAGE}",
             f"route add unreachable default table {_RULE_STORAGE}",
             f"rule add from {host.storage_ip} lookup {_RULE_STORAGE} priority {_RULE_STORAGE}"]
    for j, ip in enumerate(host.compute_ips):
        table = _RULE_COMPUTE + j
        # noprefixroute: no compute route in the main table, so compute traffic
        # must come from (be bound to) one engine's address and leaves by its CNIC.
        lines += [f"link set dev cnic{j} up",
                  f"addr add {ip}/16 dev cnic{j} noprefixroute",
                  f"route add {COMPUTE_NET} dev cnic{j} src {ip} table {table}",
                  f"route add unreachable default table {table}",
                  f"rule add from {ip} lookup {table} priority {table}"]
    return lines


def _ip(net: ipaddress.IPv4Network, offset: int) -> str:
    return str(net.network_address + offset)


def _free_mgmt_subnet() -> ipaddress.IPv4Network:
    """The first /24 of MGMT_POOLS that no root-namespace route or address overlaps."""
    used = _root_networks()
    for pool in MGMT_POOLS:
        for net in pool.subnets(new_prefix=24):
            if not any(net.overlaps(other) for other in used):
                return net
    raise NetnsError(f"no free /24 left in {', '.join(map(str, MGMT_POOLS))} for the "
                     "management network (the root namespace's routes cover them)")


def _root_networks() -> list[ipaddress.IPv4Network]:
    """Every network the root namespace routes or holds an address in, bar the default."""
    used: list[ipaddress.IPv4Network] = []
    done = _run(["ip", "-4", "-o", "route", "show", "table", "all"], check=False)
    route_types = {"local", "broadcast", "unicast", "unreachable", "blackhole", "prohibit",
                   "throw", "multicast", "anycast", "nat"}
    for line in done.stdout.splitlines():
        words = line.split()
        if words and words[0] in route_types:
            words = words[1:]
        if words and words[0] != "default":
            with contextlib.suppress(ValueError):
                used.append(ipaddress.IPv4Network(words[0], strict=False))
    done = _run(["ip", "-4", "-o", "addr", "show"], check=False)
    for match in re.finditer(r"inet (\S+)", done.stdout):
        with contextlib.suppress(ValueError):
            used.append(ipaddress.IPv4Interface(match.group(1)).network)
    return [net for net in used if net.prefixlen > 0]


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
        _run(["ip", "netns", "add", probe])
        try:
            _batch(["ip", "-n", probe], ["link add name va type veth peer name vb",
                                         "link add name br type bridge",
                                         "link set dev va master br"])
            _batch(["tc", "-n", probe], [_tbf("vb", 1e6)])
        finally:
            _run(["ip", "netns", "del", probe], check=False)
    except NetnsError as exc:
        return f"cannot build a test namespace: {exc}"
    return None
