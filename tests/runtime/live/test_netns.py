"""The namespace fabric: reachability, network separation, shaping and cleanup.

Needs root and iproute2; skipped (with the reason) where namespaces cannot be built.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from runtime.errors import ConfigError
from runtime.live.netns import (
    Fabric,
    NetnsError,
    NodeLinks,
    netns_available,
    sweep_stale,
)

REPO = Path(__file__).resolve().parents[3]
UNAVAILABLE = netns_available()
needs_netns = pytest.mark.skipif(UNAVAILABLE is not None, reason=str(UNAVAILABLE))
PORT = 7000
MB = 1e6

# Answers every connection on 0.0.0.0:PORT with the host's name.
LISTEN = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[2]))); s.listen(16); print("ready", flush=True)
while True:
    c, _ = s.accept(); c.sendall(sys.argv[1].encode()); c.close()
"""
# Connects (bound to argv[1] unless empty) and prints "ok <reply>" or "err <why>".
CONNECT = r"""
import errno, socket, sys
s = socket.socket(); s.settimeout(float(sys.argv[4]))
try:
    if sys.argv[1]:
        s.bind((sys.argv[1], 0))
    s.connect((sys.argv[2], int(sys.argv[3]))); print("ok", s.recv(100).decode())
except TimeoutError:
    print("err timeout")
except OSError as e:
    print("err", errno.errorcode.get(e.errno, str(e)))
"""
# Receives one connection to EOF; prints bytes and seconds from first byte to EOF.
SINK = r"""
import socket, sys, time
s = socket.socket(); s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1)
print("ready", flush=True)
c, _ = s.accept(); n = 0; t0 = None
while True:
    b = c.recv(1 << 20)
    if not b:
        break
    t0 = t0 or time.perf_counter(); n += len(b)
print(n, time.perf_counter() - t0, flush=True)
"""
SEND = r"""
import socket, sys
s = socket.socket(); s.bind((sys.argv[1], 0)); s.connect((sys.argv[2], int(sys.argv[3])))
s.sendall(b"x" * int(sys.argv[4])); s.close()
"""
# Builds a fabric and waits: for SIGKILL, SIGTERM, SIGINT or stdin closing (exit).
CHILD = r"""
import sys, time
from runtime.live.netns import Fabric, NodeLinks
fab = Fabric([NodeLinks(0, 1e7, (1e7,))]).__enter__()
proc = fab.popen(fab.nodes[0], ["sleep", "60"], stdin=-3, stdout=-3)
print(fab.run_id, proc.pid, flush=True)
sys.stdin.readline()
"""


def leftovers(run_id: str) -> list[str]:
    """Namespaces and root links whose names start with ``run_id``."""
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    names = [line.split()[0] for line in netns.splitlines() if line.strip()]
    names += [line.split(":")[1].strip().split("@")[0] for line in links.splitlines()]
    return [name for name in names if name.startswith(run_id)]


def connect_from(fab: Fabric, host, bind: str, dst: str, timeout: float = 2.0) -> str:
    proc = fab.popen(host, [sys.executable, "-c", CONNECT, bind, dst, str(PORT), str(timeout)],
                     stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=timeout + 10)
    return out.strip()


def transfer_s(fab: Fabric, src, src_ip: str, dst, dst_ip: str, nbytes: int) -> float:
    """Seconds a TCP transfer of ``nbytes`` takes, from its first byte to EOF."""
    sink = fab.popen(dst, [sys.executable, "-c", SINK, dst_ip, str(PORT + 1)],
                     stdout=subprocess.PIPE, text=True)
    assert sink.stdout is not None
    assert sink.stdout.readline().strip() == "ready"
    send = fab.popen(src, [sys.executable, "-c", SEND, src_ip, dst_ip, str(PORT + 1),
                           str(nbytes)])
    assert send.wait(timeout=20) == 0
    got, seconds = sink.stdout.readline().split()
    sink.wait(timeout=5)
    assert int(got) == nbytes
    return float(seconds)


@pytest.fixture(scope="module")
def fabric():
    nodes = [NodeLinks(0, 20 * MB, (20 * MB, 10 * MB)), NodeLinks(1, 20 * MB, (20 * MB,))]
    with Fabric(nodes) as fab:
        listeners = []
        for name, host in [("storage", fab.storage), *((f"n{k}", h) for k, h in fab.nodes.items())]:
            proc = fab.popen(host, [sys.executable, "-c", LISTEN, name, str(PORT)],
                             stdout=subprocess.PIPE, text=True)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            listeners.append(proc)
        yield fab
        for proc in listeners:  # the caller stops its processes before close
            proc.terminate()
            proc.wait(timeout=5)


# ---------------------------------------------------------------- validation


def test_links_and_fabric_refuse_bad_values():
    with pytest.raises(ConfigError, match="snic_bytes_s"):
        NodeLinks(0, 0.0, (1.0,))
    with pytest.raises(ConfigError, match="cnic_bytes_s"):
        NodeLinks(0, 1.0, ())
    with pytest.raises(ConfigError, match="unique"):
        Fabric([NodeLinks(0, 1.0, (1.0,)), NodeLinks(0, 1.0, (1.0,))])
    with pytest.raises(ConfigError, match="prefix"):
        Fabric([NodeLinks(0, 1.0, (1.0,))], prefix="Dp1")
    with pytest.raises(NetnsError, match="inside"):
        _ = Fabric([NodeLinks(0, 1.0, (1.0,))]).nodes


# ---------------------------------------------------------------- reachability


@needs_netns
def test_addresses_follow_the_layout(fabric):
    n0, n1 = fabric.nodes[0], fabric.nodes[1]
    assert len(n0.compute_ips) == 2 and len(n1.compute_ips) == 1
    assert fabric.storage.compute_ips == ()
    assert n0.netns == f"{fabric.run_id}-n0" and fabric.storage.netns == f"{fabric.run_id}-st"
    ips = [fabric.storage.storage_ip, n0.storage_ip, n1.storage_ip, *n0.compute_ips,
           *n1.compute_ips, fabric.storage.mgmt_ip, n0.mgmt_ip, n1.mgmt_ip, fabric.router_ip]
    assert len(set(ips)) == len(ips)


@needs_netns
def test_root_reaches_every_management_ip(fabric):
    hosts = {"storage": fabric.storage, "n0": fabric.nodes[0], "n1": fabric.nodes[1]}
    for name, host in hosts.items():
        with socket.create_connection((host.mgmt_ip, PORT), timeout=2) as sock:
            assert sock.recv(100).decode() == name


@needs_netns
def test_hosts_reach_each_other_and_the_router_over_management(fabric):
    n0, n1 = fabric.nodes[0], fabric.nodes[1]
    assert connect_from(fabric, n0, "", n1.mgmt_ip) == "ok n1"
    assert connect_from(fabric, fabric.storage, "", n0.mgmt_ip) == "ok n0"
    with socket.socket() as server:
        server.bind((fabric.router_ip, 0))
        server.listen(1)

        def answer() -> None:
            conn, _ = server.accept()
            conn.sendall(b"router")
            conn.close()

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        proc = fabric.popen(n1, [sys.executable, "-c", CONNECT, "", fabric.router_ip,
                                 str(server.getsockname()[1]), "2"],
                            stdout=subprocess.PIPE, text=True)
        assert proc.communicate(timeout=10)[0].strip() == "ok router"
        thread.join(timeout=5)


@needs_netns
def test_compute_and_storage_paths_connect(fabric):
    n0, n1 = fabric.nodes[0], fabric.nodes[1]
    for ip in n0.compute_ips:
        assert connect_from(fabric, n0, ip, n1.compute_ips[0]) == "ok n1"
    assert connect_from(fabric, n1, n1.compute_ips[0], n0.compute_ips[1]) == "ok n0"
    assert connect_from(fabric, n0, n0.storage_ip, fabric.storage.storage_ip) == "ok storage"
    assert connect_from(fabric, n1, "", fabric.storage.storage_ip) == "ok storage"


# ---------------------------------------------------------------- separation


@needs_netns
def test_compute_addresses_cannot_reach_the_storage_network(fabric):
    n0, n1 = fabric.nodes[0], fabric.nodes[1]
    storage_ip = fabric.storage.storage_ip
    # Source rules: traffic from a compute (storage) address only leaves by its own NIC.
    assert connect_from(fabric, n0, n0.compute_ips[0], storage_ip) == "err EHOSTUNREACH"
    assert connect_from(fabric, n0, n0.storage_ip, n1.compute_ips[0]) == "err EHOSTUNREACH"
    # Compute traffic must name its engine: the main table has no compute route.
    assert connect_from(fabric, n0, "", n1.compute_ips[0]) == "err ENETUNREACH"
    # Nodes do not reach each other over the storage network (isolated bridge ports).
    assert connect_from(fabric, n0, n0.storage_ip, n1.storage_ip, 0.5) == "err timeout"


@needs_netns
def test_storage_ip_is_not_on_the_compute_wire(fabric):
    """Even routed out of a CNIC by force, the storage service cannot be reached."""
    ns = fabric.nodes[0].netns
    storage_ip = fabric.storage.storage_ip
    force = [["route", "add", f"{storage_ip}/32", "dev", "cnic0", "table", "250"],
             ["rule", "add", "to", storage_ip, "lookup", "250", "priority", "50"]]
    for args in force:
        subprocess.run(["ip", "-n", ns, *args], check=True)
    try:
        assert connect_from(fabric, fabric.nodes[0], "", storage_ip, 0.5) in (
            "err timeout", "err EHOSTUNREACH")
    finally:
        subprocess.run(["ip", "-n", ns, "rule", "del", "priority", "50"], check=True)
        subprocess.run(["ip", "-n", ns, "route", "flush", "table", "250"], check=True)
    assert connect_from(fabric, fabric.nodes[0], "", storage_ip) == "ok storage"


# ---------------------------------------------------------------- shaping


@needs_netns
@pytest.mark.parametrize("path", ["node->storage", "storage->node", "compute"])
def test_links_are_shaped_in_each_direction(fabric, path):
    """About 0.5 s transfers: the node's egress, the storage->node bridge port, a CNIC."""
    n0, n1, st = fabric.nodes[0], fabric.nodes[1], fabric.storage
    if path == "node->storage":
        seconds = transfer_s(fabric, n0, n0.storage_ip, st, st.storage_ip, int(10 * MB))
    elif path == "storage->node":
        seconds = transfer_s(fabric, st, st.storage_ip, n1, n1.storage_ip, int(10 * MB))
    else:  # into node 0's second engine, whose CNIC runs at 10 MB/s
        seconds = transfer_s(fabric, n1, n1.compute_ips[0], n0, n0.compute_ips[1], int(5 * MB))
    assert seconds == pytest.approx(0.5, rel=0.25)


@needs_netns
def test_storage_service_rate_caps_both_directions():
    with Fabric([NodeLinks(0, 40 * MB, (40 * MB,))], storage_bytes_s=10 * MB) as fab:
        node, st = fab.nodes[0], fab.storage
        assert transfer_s(fab, node, node.storage_ip, st, st.storage_ip,
                          int(5 * MB)) == pytest.approx(0.5, rel=0.25)
        assert transfer_s(fab, st, st.storage_ip, node, node.storage_ip,
                          int(5 * MB)) == pytest.approx(0.5, rel=0.25)


# ---------------------------------------------------------------- cleanup


@needs_netns
def test_close_removes_everything_and_kills_leftover_processes():
    fab = Fabric([NodeLinks(3, 1 * MB, (1 * MB,))])
    with fab:
        run_id = fab.run_id
        assert len(leftovers(run_id)) == 4  # node, storage, fabric namespaces; root link
        sleeper = fab.popen(fab.nodes[3], ["sleep", "60"])
    assert sleeper.poll() is not None
    assert leftovers(run_id) == []
    fab.close()  # idempotent


@needs_netns
def test_failed_build_tears_down_and_names_the_command(monkeypatch):
    def broken(self):
        return {f"{self.run_id}-fab": ["qdisc replace dev nosuchdev root tbf rate 8bit"]}

    monkeypatch.setattr(Fabric, "_tc_lines", broken)
    fab = Fabric([NodeLinks(0, 1 * MB, (1 * MB,))])
    with pytest.raises(NetnsError, match="nosuchdev") as err:
        fab.__enter__()
    assert err.value.cmd is not None and err.value.cmd.startswith("tc -n")
    assert leftovers(fab.run_id) == []


def start_child() -> tuple[subprocess.Popen[str], str, int]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", CHILD], cwd=REPO, env=env, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdout is not None
    run_id, sleeper = child.stdout.readline().split()
    assert leftovers(run_id)
    return child, run_id, int(sleeper)


def gone(pid: int, within_s: float = 3.0) -> bool:
    """Whether ``pid`` has exited (a zombie nobody reaps counts as exited)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


@needs_netns
@pytest.mark.parametrize("how", ["exit", "sigterm", "sigint"])
def test_owner_exit_or_signal_tears_down(how):
    child, run_id, sleeper = start_child()
    if how == "exit":
        child.communicate(timeout=20)
    else:
        child.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGINT)
        child.communicate(timeout=20)
    assert leftovers(run_id) == []
    assert gone(sleeper)


@needs_netns
def test_sweep_removes_a_killed_owners_leftovers():
    child, run_id, sleeper = start_child()
    child.kill()
    child.wait(timeout=20)
    assert len(leftovers(run_id)) == 4
    removed = sweep_stale()
    assert {f"{run_id}-fab", f"{run_id}-st", f"{run_id}-n0", run_id} <= set(removed)
    assert leftovers(run_id) == []
    assert gone(sleeper)
    assert not any(name.startswith(run_id) for name in sweep_stale())
