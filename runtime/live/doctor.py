"""What this host can run: each transport tried for real, plus the host facts a live run needs.

A transport "works" when two instances of it in this process (two NIXL agents
for nixl) complete a small one-sided write and read between them and the
bytes arrive. Host facts: RDMA devices, whether we are root, whether network
namespaces can be created (a throwaway one is made and deleted; none is left
behind) and whether ``tc`` can shape traffic in one (netem), free space in
``/dev/shm`` and whether CUDA is available.

    python -m runtime.live.doctor [--json]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import secrets
import shutil
import subprocess
from typing import Any

from runtime.live.transport import TRANSPORTS, make_transport, probe
from runtime.live.transport.pyverbs import rdma_devices
from runtime.live.transport.shm import SHM_DIR

ROUND_TRIP_BYTES = 4096
ROUND_TRIP_WAIT_S = 20.0
COMMAND_TIMEOUT_S = 15.0
NETNS_PREFIX = "dpdoctor-"


def round_trip(name: str) -> None:
    """Write then read ``ROUND_TRIP_BYTES`` between two instances of transport ``name``.

    Raises (TransportError, TransportUnavailable...) unless the bytes arrive both ways.
    """
    owner = make_transport(name)
    try:
        client = make_transport(name)
        try:
            _exchange(owner, client)
        finally:
            client.close()
    finally:
        owner.close()


def _exchange(owner: Any, client: Any) -> None:
    target = owner.register(ROUND_TRIP_BYTES)
    local = client.register(ROUND_TRIP_BYTES)
    remote = client.connect(json.loads(json.dumps(target.descriptor)))
    sent = secrets.token_bytes(ROUND_TRIP_BYTES)
    local.view[:] = sent
    client.write(local, 0, remote, 0, ROUND_TRIP_BYTES).wait(ROUND_TRIP_WAIT_S)
    if target.view.tobytes() != sent:
        raise RuntimeError("write completed but the target region does not hold the bytes")
    back = secrets.token_bytes(ROUND_TRIP_BYTES)
    target.view[:] = back
    client.read(local, 0, remote, 0, ROUND_TRIP_BYTES).wait(ROUND_TRIP_WAIT_S)
    if local.view.tobytes() != back:
        raise RuntimeError("read completed but the local region does not hold the bytes")


def check_transport(name: str) -> dict[str, Any]:
    """``{"works": bool, "reason": str | None}`` for one transport."""
    reason = probe(name)
    if reason is None:
        try:
            round_trip(name)
        except Exception as exc:
            reason = f"round trip failed: {type(exc).__name__}: {exc}"
    return {"works": reason is None, "reason": reason}


def _run(*argv: str) -> tuple[bool, str]:
    """Run a command; (succeeded, its stderr or stdout, trimmed)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    return done.returncode == 0, (done.stderr or done.stdout).strip()


def check_netns_and_tc() -> tuple[dict[str, Any], dict[str, Any]]:
    """Whether ``ip netns`` can create namespaces and ``tc`` can attach netem inside one.

    The namespace is a throwaway with a unique ``dpdoctor-`` name, deleted
    before returning, so the host's own interfaces are never touched.
    """
    ip, tc = shutil.which("ip"), shutil.which("tc")
    netns: dict[str, Any] = {"usable": False, "reason": None}
    shaping: dict[str, Any] = {"usable": False, "netem": False, "reason": None}
    if tc is None:
        shaping["reason"] = "tc (iproute2) not found on PATH"
    else:
        ok, out = _run(tc, "qdisc", "show")
        shaping["usable"] = ok
        shaping["reason"] = None if ok else f"tc qdisc show failed: {out}"
    if ip is None:
        netns["reason"] = "ip (iproute2) not found on PATH"
    elif os.geteuid() != 0:
        netns["reason"] = "not root: creating a network namespace needs CAP_SYS_ADMIN"
    else:
        _try_namespace(ip, tc, netns, shaping)
    if shaping["usable"] and not shaping["netem"] and shaping["reason"] is None:
        shaping["reason"] = "netem not tried (needs a network namespace)"
    return netns, shaping


def _try_namespace(ip: str, tc: str | None, netns: dict[str, Any],
                   shaping: dict[str, Any]) -> None:
    name = f"{NETNS_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
    ok, out = _run(ip, "netns", "add", name)
    if not ok:
        netns["reason"] = f"ip netns add failed: {out}"
        return
    try:
        netns["usable"] = True
        if tc is not None:
            _run(ip, "-n", name, "link", "set", "lo", "up")
            ok, out = _run(ip, "netns", "exec", name, tc, "qdisc", "add", "dev", "lo", "root",
                           "netem", "delay", "1ms")
            shaping["netem"] = ok
            if not ok:
                shaping["reason"] = (f"netem unusable: {out} (is the sch_netem kernel module "
                                     f"available?)")
    finally:
        deleted, out = _run(ip, "netns", "delete", name)
        if not deleted:
            netns["reason"] = f"created {name} but could not delete it: {out}"


def check_cuda() -> dict[str, Any]:
    """Whether torch sees a CUDA device."""
    try:
        torch = importlib.import_module("torch")
    except Exception as exc:
        return {"available": False, "reason": f"torch not importable: {exc}"}
    if torch.cuda.is_available():
        return {"available": True, "reason": None,
                "devices": [torch.cuda.get_device_name(i)
                            for i in range(torch.cuda.device_count())]}
    built = torch.version.cuda
    build = f"built for CUDA {built}" if built else "a CPU-only build"
    return {"available": False, "reason": f"torch {torch.__version__} ({build}) sees no CUDA "
                                          f"device"}


def shm_free_bytes() -> int | None:
    try:
        return shutil.disk_usage(SHM_DIR).free
    except OSError:
        return None


def doctor() -> dict[str, Any]:
    """Each transport's ``{"works", "reason"}`` and the host facts (see the module doc)."""
    transports = {name: check_transport(name) for name in TRANSPORTS}
    netns, shaping = check_netns_and_tc()
    host = {"rdma_devices": rdma_devices(), "root": os.geteuid() == 0, "netns": netns,
            "tc": shaping, "dev_shm_free_bytes": shm_free_bytes(), "cuda": check_cuda()}
    return {"transports": transports, "host": host}


def format_doctor(result: dict[str, Any]) -> str:
    """A human-readable report of a :func:`doctor` result."""
    lines = ["transports:"]
    for name, entry in result["transports"].items():
        state = "works" if entry["works"] else "no"
        lines.append(f"  {name:<8} {state:<5} {entry['reason'] or ''}".rstrip())
    host = result["host"]
    free = host["dev_shm_free_bytes"]
    facts = [
        ("rdma devices", ", ".join(host["rdma_devices"]) or "none"),
        ("root", "yes" if host["root"] else "no"),
        ("netns", _yes_no(host["netns"]["usable"], host["netns"]["reason"])),
        ("tc", _yes_no(host["tc"]["usable"], None)),
        ("tc netem", _yes_no(host["tc"]["netem"], host["tc"]["reason"])),
        ("/dev/shm free", "unknown" if free is None else f"{free / (1 << 30):.1f} GiB"),
        ("cuda", _yes_no(host["cuda"]["available"], host["cuda"]["reason"])),
    ]
    lines.append("host:")
    lines += [f"  {key:<14} {value}" for key, value in facts]
    return "\n".join(lines)


def _yes_no(ok: bool, reason: str | None) -> str:
    return "yes" if ok else f"no ({reason})" if reason else "no"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="What this host can run for a live cluster.")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    result = doctor()
    print(json.dumps(result, indent=2) if args.json else format_doctor(result))


if __name__ == "__main__":
    main()
