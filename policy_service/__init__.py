"""The central scheduler service: gRPC API, hot-swap registry, shadow mode, decision log.

Importing the package teaches ``agents.resolve_policy`` the ``grpc://HOST:PORT``
spec (a :class:`policy_service.client.RemotePolicy`); gRPC itself is imported
only when such a spec is resolved.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agents.spec import register_scheme

if TYPE_CHECKING:
    from runtime.cluster import ClusterSpec
    from runtime.policy import Policy


def _remote(text: str, cluster: ClusterSpec | None) -> Policy:
    from policy_service.client import remote_policy

    return remote_policy(text, cluster)


register_scheme("grpc://", _remote)
