"""The cluster: domain types, cost model, workloads, and its two executions.

The executions are the discrete-event simulator (:mod:`runtime.sim`) and the live
runtime of real processes (:mod:`runtime.live`); what both run on (jobs, links,
batch formers, metrics, the ``Executor`` protocol) is in :mod:`runtime.execution`.

``runtime`` imports nothing else of ours.
"""

from runtime.cluster import ClusterSpec
from runtime.decision import Decision, Defer, WaitFor
from runtime.errors import ConfigError
from runtime.model import ModelSpec
from runtime.node import NodeSpec
from runtime.policy import Policy
from runtime.request import Request
from runtime.view import ClusterView, EngineView, NodeView, QueueView, Role

__all__ = [
    "ClusterSpec", "ClusterView", "ConfigError", "Decision", "Defer", "EngineView", "ModelSpec",
    "NodeSpec", "NodeView", "Policy", "QueueView", "Request", "Role", "WaitFor",
]
