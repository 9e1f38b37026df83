"""One-sided transports for the live runtime: ``shm``, ``tcp``, ``nixl`` and ``pyverbs``.

Usage, with the descriptor passed between the processes as JSON::

    # process A (owner)                    # process B
    a = make_transport("tcp")              b = make_transport("tcp")
    region = a.register(1 << 20)           local = b.register(4096)
    publish(region.descriptor)             remote = b.connect(descriptor)
                                           b.write(local, 0, remote, 0, 4096).wait()

``nixl`` and ``pyverbs`` are optional extras; :func:`probe` says whether a
transport works on this host and, if not, why.
"""

from __future__ import annotations

from runtime.live.transport.base import (
    Completion,
    Region,
    RemoteRegion,
    Transport,
    TransportError,
    TransportUnavailable,
)

#: Every transport's name: the one list of them (options, the doctor, benchmarks, the CLI).
TRANSPORTS = ("shm", "tcp", "nixl", "pyverbs")

__all__ = [
    "TRANSPORTS", "Completion", "Region", "RemoteRegion", "Transport", "TransportError",
    "TransportUnavailable", "make_transport", "probe",
]


def _known(name: str) -> None:
    if name not in TRANSPORTS:
        raise ValueError(f"unknown transport {name!r}: expected one of {', '.join(TRANSPORTS)}")


def make_transport(name: str, *, bind_host: str = "127.0.0.1") -> Transport:
    """A new transport instance; ``bind_host`` is where listeners bind (tcp, pyverbs;
    shm and nixl have none of their own).

    Raises :class:`TransportUnavailable` with the reason when the transport
    cannot run here (missing package, no device...).
    """
    _known(name)
    # Imported on demand so that using one transport never loads another's packages.
    if name == "shm":
        from runtime.live.transport.shm import ShmTransport
        return ShmTransport()
    if name == "tcp":
        from runtime.live.transport.tcp import TcpTransport
        return TcpTransport(bind_host)
    if name == "nixl":
        from runtime.live.transport.nixl import NixlTransport
        return NixlTransport()
    from runtime.live.transport.pyverbs import PyverbsTransport
    return PyverbsTransport(bind_host)


def probe(name: str) -> str | None:
    """None when transport ``name`` works on this host, else the reason it does not."""
    _known(name)
    if name == "shm":
        from runtime.live.transport import shm as module
    elif name == "tcp":
        from runtime.live.transport import tcp as module  # type: ignore[no-redef]
    elif name == "nixl":
        from runtime.live.transport import nixl as module  # type: ignore[no-redef]
    else:
        from runtime.live.transport import pyverbs as module  # type: ignore[no-redef]
    return module.probe()
