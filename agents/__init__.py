"""Policies: heuristics (and later learned ones) behind the one ``runtime.Policy`` protocol."""

from agents.registry import POLICIES
from agents.spec import ResolvedPolicy, list_policies, resolve_policy

__all__ = ["POLICIES", "ResolvedPolicy", "list_policies", "resolve_policy"]
