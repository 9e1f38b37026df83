"""Addresses and shaping: the management subnet, a host's ``ip`` lines, a link's ``tbf``."""

from __future__ import annotations

import contextlib
import ipaddress
import re

from runtime.live.netns.commands import (
    run_cmd,
)
from runtime.live.netns.links import (
    BURST_MAX_BYTES,
    BURST_MIN_BYTES,
    BURST_S,
    COMPUTE_NET,
    MGMT_POOLS,
    QUEUE_MIN_BYTES,
    QUEUE_S,
    RULE_COMPUTE,
    RULE_STORAGE,
    STORAGE_NET,
    WIRE_BYTES_PER_PAYLOAD,
    HostAddr,
    NetnsError,
)


def tbf_line(dev: str, payload_bytes_s: float) -> str:
    """A tc batch line limiting ``dev``'s egress to ``payload_bytes_s`` of TCP payload."""
    wire = payload_bytes_s * WIRE_BYTES_PER_PAYLOAD
    burst = int(min(BURST_MAX_BYTES, max(BURST_MIN_BYTES, wire * BURST_S)))
    limit = burst + int(max(QUEUE_MIN_BYTES, wire * QUEUE_S))
    # tc's "bps" means bytes per second; "bit" is unambiguous.
    return (f"qdisc replace dev {dev} root tbf rate {max(8, round(wire * 8))}bit "
            f"burst {burst} limit {limit}")


def node_ip_lines(host: HostAddr) -> list[str]:
    """A node's addresses, with source rules pinning each address to its own NIC."""
    lines = ["link set dev lo up", "link set dev snic up", "link set dev mgmt up",
             f"addr add {host.storage_ip}/16 dev snic",
             f"addr add {host.mgmt_ip}/24 dev mgmt",
             f"route add {STORAGE_NET} dev snic src {host.storage_ip} table {RULE_STORAGE}",
             f"route add unreachable default table {RULE_STORAGE}",
             f"rule add from {host.storage_ip} lookup {RULE_STORAGE} priority {RULE_STORAGE}"]
    for j, ip in enumerate(host.compute_ips):
        table = RULE_COMPUTE + j
        # noprefixroute: no compute route in the main table, so compute traffic
        # must come from (be bound to) one engine's address and leaves by its CNIC.
        lines += [f"link set dev cnic{j} up",
                  f"addr add {ip}/16 dev cnic{j} noprefixroute",
                  f"route add {COMPUTE_NET} dev cnic{j} src {ip} table {table}",
                  f"route add unreachable default table {table}",
                  f"rule add from {ip} lookup {table} priority {table}"]
    return lines


def address(net: ipaddress.IPv4Network, offset: int) -> str:
    return str(net.network_address + offset)


def free_mgmt_subnet() -> ipaddress.IPv4Network:
    """The first /24 of MGMT_POOLS that no root-namespace route or address overlaps."""
    used = root_networks()
    for pool in MGMT_POOLS:
        for net in pool.subnets(new_prefix=24):
            if not any(net.overlaps(other) for other in used):
                return net
    raise NetnsError(f"no free /24 left in {', '.join(map(str, MGMT_POOLS))} for the "
                     "management network (the root namespace's routes cover them)")


def root_networks() -> list[ipaddress.IPv4Network]:
    """Every network the root namespace routes or holds an address in, bar the default."""
    used: list[ipaddress.IPv4Network] = []
    done = run_cmd(["ip", "-4", "-o", "route", "show", "table", "all"], check=False)
    route_types = {"local", "broadcast", "unicast", "unreachable", "blackhole", "prohibit",
                   "throw", "multicast", "anycast", "nat"}
    for line in done.stdout.splitlines():
        words = line.split()
        if words and words[0] in route_types:
            words = words[1:]
        if words and words[0] != "default":
            with contextlib.suppress(ValueError):
                used.append(ipaddress.IPv4Network(words[0], strict=False))
    done = run_cmd(["ip", "-4", "-o", "addr", "show"], check=False)
    for match in re.finditer(r"inet (\S+)", done.stdout):
        with contextlib.suppress(ValueError):
            used.append(ipaddress.IPv4Interface(match.group(1)).network)
    return [net for net in used if net.prefixlen > 0]
