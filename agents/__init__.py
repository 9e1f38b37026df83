"""Policies: heuristics and learned ones behind the one ``runtime.Policy`` protocol.

``agents.heuristics`` holds the heuristics and their table; ``agents.spec`` resolves
every policy spec (``agents.parse`` the heuristic half of the syntax);
``agents.learned`` holds the learned policies' artifact format, export and serving
policies (imported on first use: it loads onnxruntime); ``agents.model_registry`` the
MLflow model registry; ``agents.running`` one run of a resolved policy.
"""

from agents.heuristics import HEURISTICS
from agents.spec import ResolvedPolicy, list_policies, resolve_policy

__all__ = ["HEURISTICS", "ResolvedPolicy", "list_policies", "resolve_policy"]
