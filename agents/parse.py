"""The heuristic half of the spec syntax: ``NAME[:key=value,...]`` into a policy.

Values read as ``true``/``false``, int, float, else string. ``layerwise`` and
``oracle`` are run switches (layer-wise prefill, zero-I/O oracle), not policy
parameters: they are returned beside the policy.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable
from dataclasses import dataclass

from agents.heuristics import HEURISTICS
from runtime.policy import Policy

RUN_SWITCHES = ("layerwise", "oracle")

Value = bool | int | float | str


@dataclass(frozen=True)
class ResolvedPolicy:
    """A policy built from ``spec``, with the run switches the spec set (``None``: not given)."""

    policy: Policy
    layerwise: bool | None
    oracle: bool | None
    spec: str


def list_policies() -> list[str]:
    """Names of the policies ``resolve_policy`` builds, sorted."""
    return sorted(HEURISTICS)


def parse_heuristic(text: str) -> ResolvedPolicy | None:
    """The heuristic ``text`` names, with its run switches; ``None`` if ``text`` does not
    name a heuristic; ValueError naming the bad part of a malformed one."""
    name, sep, rest = text.partition(":")
    name = name.strip()
    if name not in HEURISTICS:
        return None
    return _build(text, name, _parse_params(text, rest) if sep else {})


def suggest(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or nothing."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _parse_params(text: str, rest: str) -> dict[str, Value]:
    params: dict[str, Value] = {}
    for item in rest.split(","):
        key, eq, raw = (part.strip() for part in item.partition("="))
        if not eq or not key or not raw:
            raise ValueError(f"policy spec {text!r}: malformed parameter {item.strip()!r}, "
                             "expected key=value")
        if key in params:
            raise ValueError(f"policy spec {text!r}: parameter {key!r} given twice")
        params[key] = _parse_value(raw)
    return params


def _parse_value(raw: str) -> Value:
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def _accepted(cls: type) -> list[str]:
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in inspect.signature(cls).parameters.values() if p.kind in kinds]


def _build(text: str, name: str, params: dict[str, Value]) -> ResolvedPolicy:
    switches: dict[str, bool | None] = {}
    for key in RUN_SWITCHES:
        value = params.pop(key, None)
        if value is not None and not isinstance(value, bool):
            raise ValueError(f"policy spec {text!r}: {key} must be true or false, got {value!r}")
        switches[key] = value
    cls = HEURISTICS[name]
    accepted = _accepted(cls)
    for key in params:
        if key not in accepted:
            takes = (f"accepts {', '.join(accepted)}" if accepted else "accepts no parameters")
            raise ValueError(
                f"policy spec {text!r}: unknown parameter {key!r}{suggest(key, accepted)}; "
                f"{name} {takes} (run switches: {', '.join(RUN_SWITCHES)})")
    try:
        policy = cls(**params)
    except ValueError as err:
        raise ValueError(f"policy spec {text!r}: {err}") from err
    return ResolvedPolicy(policy=policy, layerwise=switches["layerwise"],
                          oracle=switches["oracle"], spec=text)
