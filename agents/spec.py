"""One syntax names every policy; :func:`resolve_policy` turns it into a policy.

``NAME[:key=value,...]`` names a heuristic with parameters, for example
``dualpath:alpha_s=2,beta_s=5``. Values read as ``true``/``false``, int, float,
else string. ``layerwise`` and ``oracle`` are run switches (layer-wise prefill,
zero-I/O oracle), not policy parameters: they are returned beside the policy.

Learned policies (see ``agents.learned`` for the artifact format) are named by
``pretrained:NAME`` (an artifact shipped in ``agents/pretrained/NAME/``), a path
to an artifact (its directory, policy.json or policy.onnx), or an MLflow model
URI, ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` (downloaded from the
tracking server ``MLFLOW_TRACKING_URI`` names). They need the ``cluster`` they
serve. ``grpc://HOST:PORT`` names the policy service; its client lives in a
higher layer (``policy_service``), which registers it with :func:`register_scheme`
when imported.
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from agents.registry import POLICIES
from runtime.cluster import ClusterSpec
from runtime.policy import Policy

RUN_SWITCHES = ("layerwise", "oracle")
_LEARNED_PREFIXES = ("pretrained:", "models:/", "grpc://")
_ARTIFACT_SUFFIXES = (".onnx", ".pt", ".json", ".zip")

Value = bool | int | float | str

#: Spec prefixes resolved by higher layers: prefix → factory(spec, cluster).
SCHEMES: dict[str, Callable[[str, ClusterSpec | None], Policy]] = {}


def register_scheme(prefix: str, factory: Callable[[str, ClusterSpec | None], Policy]) -> None:
    """Let ``resolve_policy`` build the policies whose specs start with ``prefix``."""
    SCHEMES[prefix] = factory


@dataclass(frozen=True)
class ResolvedPolicy:
    """A policy built from ``spec``, with the run switches the spec set (``None``: not given)."""

    policy: Policy
    layerwise: bool | None
    oracle: bool | None
    spec: str


def list_policies() -> list[str]:
    """Names of the policies ``resolve_policy`` builds, sorted."""
    return sorted(POLICIES)


def resolve_policy(spec: str, cluster: ClusterSpec | None = None) -> ResolvedPolicy:
    """Build the policy ``spec`` names; ValueError (naming the spec and the bad part) if invalid.

    ``cluster`` is for policies whose shape depends on the cluster (learned
    policies' encodings; ValueError if they get none); heuristics read the cluster
    from each view.
    """
    if not isinstance(spec, str):
        raise TypeError(f"policy spec must be a string, got {type(spec).__name__}")
    text = spec.strip()
    if not text:
        raise ValueError(f"policy spec {spec!r} is empty; expected NAME[:key=value,...] "
                         f"with NAME one of {', '.join(list_policies())}")
    name, sep, rest = text.partition(":")
    name = name.strip()
    if name in POLICIES:
        params = _parse_params(text, rest) if sep else {}
        return _build(text, name, params)
    if _is_learned(text):
        return _resolve_learned(text, cluster)
    if not name:
        raise ValueError(f"policy spec {text!r}: missing policy name before ':'")
    raise ValueError(f"policy spec {text!r}: unknown policy {name!r}{_suggest(name, POLICIES)}; "
                     f"known policies: {', '.join(list_policies())}")


def _resolve_learned(text: str, cluster: ClusterSpec | None) -> ResolvedPolicy:
    for prefix, factory in SCHEMES.items():
        if text.startswith(prefix):
            return ResolvedPolicy(policy=factory(text, cluster), layerwise=None, oracle=None,
                                  spec=text)
    if text.startswith("grpc://"):
        raise ValueError(f"policy spec {text!r}: grpc:// specs are resolved by the "
                         "policy_service package; import it first")
    if cluster is None:
        raise ValueError(f"policy spec {text!r}: a learned policy needs the cluster it serves "
                         "(its encoding is sized to it); pass cluster=")
    # Imported here: heuristic users should not pay for onnxruntime, nor MLflow.
    from agents import learned

    try:
        if text.startswith("pretrained:"):
            artifact = learned.load_pretrained(text.removeprefix("pretrained:").strip())
        elif text.startswith("models:/"):
            artifact = learned.load_registered(text)
        else:
            artifact = learned.load_artifact(text)
        policy = learned.policy_from_artifact(artifact, cluster)
    except ValueError as err:
        raise ValueError(f"policy spec {text!r}: {err}") from err
    return ResolvedPolicy(policy=policy, layerwise=None, oracle=None, spec=text)


def _is_learned(text: str) -> bool:
    return (text.startswith(_LEARNED_PREFIXES) or text.lower().endswith(_ARTIFACT_SUFFIXES)
            or os.path.exists(text))


def _suggest(word: str, choices: Iterable[str]) -> str:
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
    cls = POLICIES[name]
    accepted = _accepted(cls)
    for key in params:
        if key not in accepted:
            takes = (f"accepts {', '.join(accepted)}" if accepted else "accepts no parameters")
            raise ValueError(
                f"policy spec {text!r}: unknown parameter {key!r}{_suggest(key, accepted)}; "
                f"{name} {takes} (run switches: {', '.join(RUN_SWITCHES)})")
    try:
        policy = cls(**params)
    except ValueError as err:
        raise ValueError(f"policy spec {text!r}: {err}") from err
    return ResolvedPolicy(policy=policy, layerwise=switches["layerwise"],
                          oracle=switches["oracle"], spec=text)
