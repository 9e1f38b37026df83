"""Policies: heuristics and learned ones behind the one ``runtime.Policy`` protocol."""

from typing import TYPE_CHECKING, Any

from agents.registry import POLICIES
from agents.spec import ResolvedPolicy, list_policies, resolve_policy

if TYPE_CHECKING:
    from agents.learned import (
        Artifact,
        LearnedRouter,
        TunedHeuristic,
        export_artifact,
        load_artifact,
        make_tunable,
    )

# The learned side imports the env encoding and onnxruntime (most of a second):
# loaded on first use, so that heuristic users do not pay for it.
_LEARNED = ("Artifact", "LearnedRouter", "TunedHeuristic", "export_artifact", "load_artifact",
            "make_tunable")


def __getattr__(name: str) -> Any:
    if name in _LEARNED:
        from agents import learned

        return getattr(learned, name)
    raise AttributeError(f"module 'agents' has no attribute {name!r}")


__all__ = ["POLICIES", "Artifact", "LearnedRouter", "ResolvedPolicy", "TunedHeuristic",
           "export_artifact", "list_policies", "load_artifact", "make_tunable", "resolve_policy"]
