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

Modules: :mod:`.fabric` (:class:`Fabric`, :func:`netns_available`), :mod:`.links`
(addresses, shaping constants, :class:`NodeLinks`, :class:`HostAddr`), :mod:`.commands`
(the ``ip``/``tc`` calls) and :mod:`.ownership` (run records, :func:`sweep_stale`).
"""

from runtime.live.netns.commands import list_netns
from runtime.live.netns.fabric import Fabric, netns_available
from runtime.live.netns.links import HostAddr, NetnsError, NodeLinks
from runtime.live.netns.ownership import sweep_stale

__all__ = ["Fabric", "HostAddr", "NetnsError", "NodeLinks", "list_netns", "netns_available",
           "sweep_stale"]
