"""The policy spec syntax: parsing, run switches, every error, learned specs."""

from __future__ import annotations

import pytest

from agents import HEURISTICS, ResolvedPolicy, list_policies, resolve_policy
from agents import spec as spec_module
from agents.heuristics import DualPath, DualPathSplit, PeOnly
from runtime.policy import Policy
from tests.builders import make_spec


def test_list_policies_names_every_registered_heuristic():
    assert list_policies() == sorted(HEURISTICS)
    assert set(list_policies()) == {"pe_only", "round_robin", "least_tokens", "dualpath",
                                    "dualpath_split", "cache_aware", "dualpath_cache"}


@pytest.mark.parametrize("name", sorted(HEURISTICS))
def test_every_name_resolves_with_defaults(name):
    resolved = resolve_policy(name)
    assert isinstance(resolved, ResolvedPolicy)
    assert isinstance(resolved.policy, Policy)
    assert resolved.policy.name == name
    assert (resolved.layerwise, resolved.oracle, resolved.spec) == (None, None, name)


def test_parameters_are_passed_to_the_policy():
    resolved = resolve_policy("dualpath:alpha_s=2,beta_s=5.5,z_slack=1")
    policy = resolved.policy
    assert isinstance(policy, DualPath)
    assert (policy.alpha_s, policy.beta_s, policy.z_slack) == (2.0, 5.5, 1.0)


def test_whitespace_is_tolerated_and_the_spec_kept():
    resolved = resolve_policy("  dualpath_split : alpha_s = 1 , oracle = TRUE ")
    assert isinstance(resolved.policy, DualPathSplit)
    assert resolved.policy.alpha_s == 1.0
    assert resolved.oracle is True
    assert resolved.spec == "dualpath_split : alpha_s = 1 , oracle = TRUE"


@pytest.mark.parametrize(("spec", "layerwise", "oracle"), [
    ("pe_only:layerwise=false", False, None),
    ("dualpath:oracle=true", None, True),
    ("dualpath:layerwise=true,oracle=false,alpha_s=2", True, False),
])
def test_run_switches_are_returned_not_passed(spec, layerwise, oracle):
    resolved = resolve_policy(spec)
    assert (resolved.layerwise, resolved.oracle) == (layerwise, oracle)


def test_cluster_is_accepted():
    resolved = resolve_policy("pe_only", make_spec())
    assert isinstance(resolved.policy, PeOnly)


def test_resolved_policy_is_frozen():
    resolved = resolve_policy("pe_only")
    with pytest.raises(AttributeError):
        resolved.oracle = True  # type: ignore[misc]


def test_each_resolution_builds_a_fresh_policy():
    assert resolve_policy("pe_only").policy is not resolve_policy("pe_only").policy


@pytest.mark.parametrize(("spec", "message"), [
    ("", "empty"),
    ("   ", "empty"),
    ("dualpth", r"unknown policy 'dualpth' \(did you mean 'dualpath'\?\).*pe_only"),
    ("fifo", r"unknown policy 'fifo'; known policies: cache_aware, dualpath, dualpath_cache"),
    (":alpha_s=2", "missing policy name"),
    ("dualpath:", "malformed parameter ''"),
    ("dualpath:alpha_s", "malformed parameter 'alpha_s'"),
    ("dualpath:=2", "malformed parameter '=2'"),
    ("dualpath:alpha_s=", "malformed parameter 'alpha_s='"),
    ("dualpath:alpha_s=1,,beta_s=2", "malformed parameter ''"),
    ("dualpath:alpha_s=1,alpha_s=2", "'alpha_s' given twice"),
    ("dualpath:alpha=2", r"unknown parameter 'alpha' \(did you mean 'alpha_s'\?\); "
                         "dualpath accepts alpha_s, beta_s, z_slack"),
    ("round_robin:alpha_s=2", "unknown parameter 'alpha_s'.*round_robin accepts read"),
    ("pe_only:alpha_s=2", "unknown parameter 'alpha_s'.*pe_only accepts order, max_wait_s"),
    ("dualpath:order=lifo", "order: unknown queue order 'lifo'; choose one of fifo, edf, short"),
    ("dualpath_cache:max_wait_s=0", "max_wait_s: must be a number > 0"),
    ("cache_aware:max_wait_s=-3", "max_wait_s: must be a number > 0"),
    ("cache_aware:path=de", "path must be one of pe, shorter"),
    ("round_robin:read=fast", "read must be one of shorter, alternate, got 'fast'"),
    ("dualpath:alpha_s=fast", "alpha_s must be a number, got 'fast'"),
    ("dualpath:beta_s=true", "beta_s must be a number, got True"),
    ("dualpath:alpha_s=-1", "alpha_s must be .*>= 0"),
    ("dualpath:z_slack=0", "z_slack must be .*> 0"),
    ("pe_only:layerwise=1", "layerwise must be true or false, got 1"),
    ("pe_only:oracle=yes", "oracle must be true or false, got 'yes'"),
])
def test_bad_specs_are_refused_naming_the_spec_and_the_part(spec, message):
    with pytest.raises(ValueError, match=message) as err:
        resolve_policy(spec)
    assert f"policy spec {spec!r}" in str(err.value)


def test_grpc_specs_need_the_policy_service_package(monkeypatch):
    monkeypatch.setattr(spec_module, "SCHEMES", {})
    with pytest.raises(ValueError, match="resolved by the policy_service package"):
        resolve_policy("grpc://127.0.0.1:50051", make_spec())


def test_a_registered_scheme_builds_its_policies(monkeypatch):
    monkeypatch.setattr(spec_module, "SCHEMES", {})
    seen = []

    def factory(text, cluster):
        seen.append((text, cluster))
        return PeOnly()

    spec_module.register_scheme("grpc://", factory)
    cluster = make_spec()
    resolved = resolve_policy("grpc://127.0.0.1:1", cluster)
    assert isinstance(resolved.policy, PeOnly) and resolved.spec == "grpc://127.0.0.1:1"
    assert seen == [("grpc://127.0.0.1:1", cluster)]


@pytest.mark.parametrize("spec", [
    "pretrained:ppo-2p4d",
    "runs/42/policy.onnx",
    "policy.json",
    "models:/dualpath-scheduler@champion",
])
def test_learned_specs_need_a_cluster(spec):
    with pytest.raises(ValueError, match=f"policy spec {spec!r}: a learned policy needs the "
                                         "cluster it serves"):
        resolve_policy(spec)


@pytest.mark.parametrize(("spec", "message"), [
    ("pretrained:ppo-2p4d", "no pretrained policy 'ppo-2p4d'; available: "),
    ("runs/42/policy.onnx", "runs/42/policy.onnx: no such file or directory"),
    ("policy.pt", "policy.pt: no such file or directory"),
    ("models:/dualpath-scheduler", "expected models:/NAME@ALIAS or models:/NAME/VERSION"),
])
def test_learned_specs_that_name_nothing_are_refused(spec, message):
    with pytest.raises(ValueError, match=message) as err:
        resolve_policy(spec, make_spec())
    assert str(err.value).startswith(f"policy spec {spec!r}: ")


def test_a_spec_must_be_a_string():
    with pytest.raises(TypeError, match="string"):
        resolve_policy(None)  # type: ignore[arg-type]


def test_an_existing_path_is_a_learned_spec(tmp_path):
    artifact = tmp_path / "policy.bin"
    artifact.write_bytes(b"")
    with pytest.raises(ValueError, match="policy.bin: not a trained-policy artifact"):
        resolve_policy(str(artifact), make_spec())
