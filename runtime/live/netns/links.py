"""The fabric's address plan and shaping constants, and what a node's links are."""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass

from runtime.errors import require

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

RULE_STORAGE = 200  # table and rule priority for traffic from the storage IP
RULE_COMPUTE = 300  # + engine index, for traffic from that engine's compute IP
ROOT_RE = re.compile(r"[a-z]{1,4}")
SYSCTLS = (
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
        require(is_rate(self.snic_bytes_s), f"{key}.snic_bytes_s",
                f"must be a finite rate > 0, got {self.snic_bytes_s}")
        require(isinstance(self.cnic_bytes_s, tuple) and 0 < len(self.cnic_bytes_s) <= MAX_ENGINES,
                f"{key}.cnic_bytes_s",
                f"must be a tuple of 1..{MAX_ENGINES} rates (one per engine), "
                f"got {self.cnic_bytes_s!r}")
        for j, rate in enumerate(self.cnic_bytes_s):
            require(is_rate(rate), f"{key}.cnic_bytes_s[{j}]",
                    f"must be a finite rate > 0, got {rate}")


@dataclass(frozen=True)
class HostAddr:
    """Where one emulated host lives and its addresses on each network."""

    netns: str
    mgmt_ip: str
    storage_ip: str
    compute_ips: tuple[str, ...]


def is_rate(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


