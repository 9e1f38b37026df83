"""Trained-policy artifacts: export, the exported network against SB3, the served policies
against the env's handling of its agent, every refusal, and the three ways to name one."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from sb3_contrib import MaskablePPO
from stable_baselines3 import PPO

from agents import learned
from agents.heuristics import DualPath, DualPathSplit
from agents.learned import (
    LearnedRouter,
    TunedHeuristic,
    export_artifact,
    load_artifact,
    make_tunable,
)
from agents.learned import artifact as artifact_module
from agents.spec import resolve_policy
from env import DualPathEnv, Encoding, Tuning
from runtime.decision import Decision
from runtime.preset import load_preset
from runtime.sim import Simulator
from runtime.workload.agentic import AgenticWorkload

AGENTS = 8
# Small padding keeps the networks small; window_s gives a tuning episode ~250 windows.
ENCODING = Encoding(max_prefill=4, max_decode=4, max_nodes=2)
PARTIAL = Encoding(max_prefill=4, max_decode=4, max_nodes=2, control=("prefill", "path"))
TUNING = Tuning(window_s=0.05)


@pytest.fixture(scope="module")
def cluster():
    """The tiny preset with decode HBM for about two contexts: requests wait for decode room,
    so the defer rules are exercised."""
    base = load_preset("tiny")
    return dataclasses.replace(base, node=dataclasses.replace(base.node, de_hbm_kv_gb=0.07))


def route_env(cluster, encoding=ENCODING, fallback=None):
    return DualPathEnv(cluster, agents=AGENTS, encoding=encoding, fallback=fallback)


def tune_env(cluster):
    return DualPathEnv(cluster, mode="tune", agents=AGENTS, encoding=ENCODING, tuning=TUNING,
                       tunable=make_tunable)


def scrambled(model):
    """``model`` with noise on every weight and bias. Equivalence needs a network, not a
    good one (learning costs seconds), but a fresh one has zero biases, which the
    exporter folds away: noise makes the export carry everything a trained one does."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.policy.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.1)
    return model


@pytest.fixture(scope="module")
def route_model(cluster):
    return scrambled(MaskablePPO("MlpPolicy", route_env(cluster), n_steps=64, batch_size=64,
                                 seed=0))


@pytest.fixture(scope="module")
def route_dir(route_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("artifacts") / "router"
    return export_artifact(route_model, out, mode="route", encoding=ENCODING, fallback=None,
                           train_meta={"steps": 0, "preset": "tiny"})


@pytest.fixture(scope="module")
def partial_model(cluster):
    env = route_env(cluster, PARTIAL, DualPath())
    return scrambled(MaskablePPO("MlpPolicy", env, n_steps=64, batch_size=64, seed=1))


@pytest.fixture(scope="module")
def partial_dir(partial_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("artifacts") / "partial"
    return export_artifact(partial_model, out, mode="route", encoding=PARTIAL,
                           fallback="dualpath")


@pytest.fixture(scope="module")
def tune_model(cluster):
    return scrambled(PPO("MlpPolicy", tune_env(cluster), n_steps=64, batch_size=64, seed=0))


@pytest.fixture(scope="module")
def tune_dir(tune_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("artifacts") / "tuner"
    return export_artifact(tune_model, out, mode="tune", encoding=ENCODING, tuning=TUNING)


# -- the exported network is the model's ------------------------------------------

def collect(env, seeds, masked):
    """Observations (and masks) of whole episodes under random valid actions."""
    rng = np.random.default_rng(0)
    obs_rows, mask_rows = [], []
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        done = False
        while not done:
            mask = env.action_masks()
            obs_rows.append(obs)
            mask_rows.append(mask)
            bounds = np.cumsum((0, *env.action_space.nvec))
            action = [rng.choice(np.flatnonzero(mask[a:b]) if masked else b - a)
                      for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
            obs, _, done, _, _ = env.step(np.array(action))
    return np.array(obs_rows), np.array(mask_rows)


def test_router_network_picks_the_models_actions(cluster, route_model, route_dir):
    obs, masks = collect(route_env(cluster), (0,), masked=True)
    assert len(obs) >= 200 and not masks.all()
    want, _ = route_model.predict(obs, action_masks=masks, deterministic=True)
    artifact = load_artifact(route_dir)
    np.testing.assert_array_equal(artifact.act_batch(obs, masks), want)
    router = LearnedRouter(artifact, cluster)
    np.testing.assert_array_equal([router.act(o, m) for o, m in zip(obs, masks, strict=True)],
                                  want)


def test_router_says_the_models_probability_of_its_action(cluster, route_model, route_dir):
    obs, masks = collect(route_env(cluster), (0,), masked=True)
    obs, masks = obs[:50], masks[:50]
    want, _ = route_model.predict(obs, action_masks=masks, deterministic=True)
    with torch.no_grad():
        dist = route_model.policy.get_distribution(
            route_model.policy.obs_to_tensor(obs)[0], action_masks=masks)
        model_prob = dist.log_prob(torch.as_tensor(want)).exp().numpy()
    router = LearnedRouter(load_artifact(route_dir), cluster)
    probs = []
    for o, m in zip(obs, masks, strict=True):
        router.act(o, m)
        probs.append(router._actor.action_prob)
    np.testing.assert_allclose(probs, model_prob, rtol=1e-4)
    assert all(0 < p <= 1 for p in probs)


def test_tuner_network_picks_the_models_actions(cluster, tune_model, tune_dir):
    obs, _ = collect(tune_env(cluster), (0, 1), masked=False)
    assert len(obs) >= 200
    want, _ = tune_model.predict(obs, deterministic=True)
    artifact = load_artifact(tune_dir)
    np.testing.assert_array_equal(artifact.act_batch(obs), want)
    assert [artifact.act(o).tolist() for o in obs[:20]] == want[:20].tolist()


def test_metadata(route_dir, tune_dir):
    meta = json.loads((route_dir / "policy.json").read_text())
    assert meta["format"] == "dualpath-policy" and meta["format_version"] == 1
    assert (meta["mode"], meta["algo"], meta["name"]) == ("route", "MaskablePPO", "router")
    assert meta["encoding"] == ENCODING.to_json() and meta["tuning"] is None
    assert meta["obs_size"] == ENCODING.obs_size
    assert meta["action_nvec"] == [4, 4, 5] and meta["fallback"] is None
    assert meta["train"] == {"steps": 0, "preset": "tiny"}
    tune = json.loads((tune_dir / "policy.json").read_text())
    assert (tune["mode"], tune["algo"], tune["tuning"]) == ("tune", "PPO", TUNING.to_json())
    assert tune["action_nvec"] == list(TUNING.action_nvec)


def test_export_refuses_mismatched_arguments(route_model, tmp_path):
    with pytest.raises(ValueError, match="controls only prefill, path: the artifact needs"):
        export_artifact(route_model, tmp_path, mode="route", encoding=PARTIAL, fallback=None)
    with pytest.raises(ValueError, match="does not match the route action sizes"):
        export_artifact(route_model, tmp_path, mode="route", encoding=PARTIAL)
    with pytest.raises(ValueError, match="tuning mode needs tuning="):
        export_artifact(route_model, tmp_path, mode="tune", encoding=ENCODING)
    with pytest.raises(ValueError, match="fallback 'fifo' is not a heuristic spec"):
        export_artifact(route_model, tmp_path, mode="route", encoding=ENCODING, fallback="fifo")
    with pytest.raises(ValueError, match="JSON values only"):
        export_artifact(route_model, tmp_path, mode="route", encoding=ENCODING,
                        train_meta={"when": object()})
    assert not (tmp_path / "policy.json").exists()


# -- the served policies decide as the env lets the agent decide ------------------

@pytest.fixture
def applied(monkeypatch):
    """Every answer any simulator applies, in order, without the free-text reasons."""
    log: list[tuple] = []
    original = Simulator.apply

    def apply(self, decision):
        if isinstance(decision, Decision):
            log.append((decision.prefill_engine, decision.decode_engine, decision.decode_share))
        else:
            log.append(("defer", getattr(decision, "wait_for", None)))
        original(self, decision)

    monkeypatch.setattr(Simulator, "apply", apply)
    return log


def env_rollout(env, model, masked, log):
    obs, _ = env.reset(seed=0)
    done = False
    while not done:
        mask = env.action_masks() if masked else None
        action, _ = model.predict(obs, action_masks=mask, deterministic=True) if masked else \
            model.predict(obs, deterministic=True)
        obs, _, done, _, info = env.step(action)
    taken = list(log)
    log.clear()
    return taken, info["metrics"]


def served_rollout(spec, cluster, log):
    policy = resolve_policy(str(spec), cluster).policy
    result = Simulator(cluster, AgenticWorkload(AGENTS, "32k", 0)).run(policy)
    return policy, list(log), result.metrics


@pytest.mark.parametrize(("artifact", "model", "env"), [
    ("route_dir", "route_model", lambda c: route_env(c)),
    ("partial_dir", "partial_model", lambda c: route_env(c, PARTIAL, DualPath())),
])
def test_router_replays_the_env_episode(request, cluster, applied, artifact, model, env):
    path = request.getfixturevalue(artifact)
    trained, env_metrics = env_rollout(env(cluster), request.getfixturevalue(model), True,
                                       applied)
    policy, served, metrics = served_rollout(path / "policy.onnx", cluster, applied)
    assert isinstance(policy, LearnedRouter)
    assert served == trained
    assert sum(a[0] == "defer" for a in served) > 0  # the defer rules were exercised
    assert metrics["requests"] == env_metrics["requests"] == 255
    assert metrics["jct_mean_s"] == env_metrics["jct_mean_s"]


def test_tuned_heuristic_replays_the_env_episode(cluster, applied, tune_model, tune_dir):
    trained, env_metrics = env_rollout(tune_env(cluster), tune_model, False, applied)
    policy, served, metrics = served_rollout(tune_dir, cluster, applied)
    assert isinstance(policy, TunedHeuristic)
    assert served == trained
    assert metrics["jct_mean_s"] == env_metrics["jct_mean_s"]
    assert type(policy.policy) in (DualPath, DualPathSplit) and set(policy.params) == {
        "alpha_s", "beta_s", "z_slack", "split"}


def test_router_reason_and_name(cluster, route_dir, partial_dir):
    sim = Simulator(cluster, AgenticWorkload(AGENTS, "32k", 0))
    request, view = sim.next_decision()
    router = resolve_policy(str(route_dir), cluster).policy
    assert router.name == "learned:router"
    assert router.decide(request, view).reason.startswith("learned pe=")
    partial = resolve_policy(str(partial_dir), cluster).policy
    reason = partial.decide(request, view).reason
    assert "share=" in reason and reason.endswith("(rest: dualpath)")


def test_router_refuses_another_cluster(cluster, route_dir):
    router = resolve_policy(str(route_dir), cluster).policy
    other = load_preset("tiny")
    request, view = Simulator(other, AgenticWorkload(2, "32k", 0)).next_decision()
    with pytest.raises(ValueError, match="for cluster 'tiny'; the view's cluster 'tiny' differs"):
        router.decide(request, view)


def test_encoding_must_fit_the_cluster(route_dir):
    with pytest.raises(ValueError, match="has 8 prefill engines; the encoding pads to 4"):
        resolve_policy(str(route_dir), load_preset("ds27b-1p1d"))


def test_modes_are_not_mixed(cluster, route_dir, tune_dir):
    with pytest.raises(ValueError, match="tune-mode artifact; LearnedRouter serves routing"):
        LearnedRouter(load_artifact(tune_dir), cluster)
    with pytest.raises(ValueError, match="route-mode artifact; TunedHeuristic serves tuning"):
        TunedHeuristic(load_artifact(route_dir), cluster)


@pytest.mark.parametrize(("params", "cls", "alpha"), [
    ({}, DualPath, 3.0),
    ({"alpha_s": 6.0, "beta_s": 2.5, "z_slack": 1.2, "split": 0.0}, DualPath, 6.0),
    ({"alpha_s": 0.5, "split": 1.0}, DualPathSplit, 0.5),
])
def test_make_tunable(params, cls, alpha):
    policy = make_tunable(params)
    assert type(policy) is cls and policy.alpha_s == alpha


# -- load refuses what it cannot serve ---------------------------------------------

def edit_meta(**changes):
    def edit(folder: Path) -> None:
        meta = json.loads((folder / "policy.json").read_text())
        for key, value in changes.items():
            if value is ...:
                del meta[key]
            else:
                meta[key] = value
        (folder / "policy.json").write_text(json.dumps(meta))
    return edit


def edit_encoding(**changes):
    def edit(folder: Path) -> None:
        meta = json.loads((folder / "policy.json").read_text())
        meta["encoding"].update(changes)
        (folder / "policy.json").write_text(json.dumps(meta))
    return edit


def replace_onnx(data: bytes, fix_sha: bool = True):
    def edit(folder: Path) -> None:
        (folder / "policy.onnx").write_bytes(data)
        if fix_sha:
            import hashlib
            edit_meta(onnx_sha256=hashlib.sha256(data).hexdigest())(folder)
    return edit


def corrupt(folder: Path) -> None:
    data = bytearray((folder / "policy.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "policy.onnx").write_bytes(bytes(data))


def identity_onnx(width: int) -> bytes:
    """A valid network with the wrong width: obs [batch, width] -> logits [batch, width]."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["obs"], ["logits"])], "wrong",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", width])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                             ir_version=8).SerializeToString()


@pytest.mark.parametrize(("edit", "file", "message"), [
    (lambda d: (d / "policy.json").unlink(), "policy.json", "missing"),
    (lambda d: (d / "policy.onnx").unlink(), "policy.onnx", "missing"),
    (lambda d: (d / "policy.json").write_text("{not json"), "policy.json", "not valid JSON"),
    (lambda d: (d / "policy.json").write_text("[1, 2]"), "policy.json", "expected a JSON object"),
    (edit_meta(format="sb3-zip"), "policy.json", "format is 'sb3-zip'"),
    (edit_meta(format_version=2), "policy.json", "format_version 2 is not supported"),
    (edit_meta(onnx_sha256=...), "policy.json", "lacks onnx_sha256"),
    (edit_meta(mode="serve"), "policy.json", "mode 'serve' is not one of"),
    (edit_encoding(version=99), "policy.json", "trained with encoding version 99"),
    (edit_meta(obs_size=ENCODING.obs_size + 1), "policy.json",
     "features changed without an encoding version bump"),
    (edit_meta(action_nvec=[4, 4, 3]), "policy.json", "action_nvec .* does not match"),
    (edit_meta(fallback="fifo"), "policy.json", "fallback 'fifo' is not a heuristic"),
    (edit_encoding(control=["prefill"]), "policy.json", "no fallback is given"),
    (edit_meta(tuning={"levels": 3}), "policy.json", "tuning block is malformed"),
    (corrupt, "policy.onnx", "does not match policy.json's onnx_sha256"),
    (replace_onnx(b"not a network"), "policy.onnx", "onnxruntime cannot load it"),
    (replace_onnx(identity_onnx(7)), "policy.onnx", r"expected one input 'obs' float32 \[batch,"),
])
def test_load_refuses(route_dir, tmp_path, edit, file, message):
    folder = shutil.copytree(route_dir, tmp_path / "copy")
    edit(folder)
    with pytest.raises(ValueError, match=message) as err:
        load_artifact(folder)
    assert str(err.value).startswith(str(folder / file))


def test_load_accepts_the_directory_or_either_file(route_dir):
    for path in (route_dir, route_dir / "policy.json", route_dir / "policy.onnx"):
        assert load_artifact(path).name == "router"


@pytest.mark.parametrize(("name", "message"), [
    ("absent", "no such file or directory"),
    ("model.zip", "not a trained-policy artifact"),
])
def test_load_refuses_what_is_no_artifact(tmp_path, name, message):
    path = tmp_path / name
    if name.endswith(".zip"):
        path.write_bytes(b"PK")
    with pytest.raises(ValueError, match=message):
        load_artifact(path)


def test_exported_graph_is_a_valid_onnx_model(route_dir):
    model = onnx.load(str(route_dir / "policy.onnx"))
    onnx.checker.check_model(model)
    assert {"mlp.policy_net.0.bias", "head.bias"} <= {i.name for i in model.graph.initializer}


# -- naming an artifact -------------------------------------------------------------

def test_pretrained_names(monkeypatch, tmp_path, cluster, route_dir):
    monkeypatch.setattr(artifact_module, "PRETRAINED_ROOT", tmp_path)
    with pytest.raises(ValueError, match="no pretrained policy 'NOPE'; available: none are"):
        resolve_policy("pretrained:NOPE", cluster)
    shutil.copytree(route_dir, tmp_path / "tiny-router")
    shutil.copytree(route_dir, tmp_path / "another")
    (tmp_path / "not-an-artifact").mkdir()
    with pytest.raises(ValueError, match=r"^policy spec 'pretrained:NOPE': no pretrained policy "
                                         "'NOPE'; available: another, tiny-router$"):
        resolve_policy("pretrained:NOPE", cluster)
    assert isinstance(resolve_policy("pretrained:tiny-router", cluster).policy, LearnedRouter)


def test_learned_specs_need_the_cluster(route_dir):
    with pytest.raises(ValueError, match="needs the cluster it serves"):
        resolve_policy(str(route_dir))


def test_shipped_pretrained_folder_is_a_package():
    assert (learned.PRETRAINED_ROOT / "__init__.py").is_file()
    assert all(name for name in learned.pretrained_names())


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A throwaway SQLite store. Its schema migrations commit hundreds of times; without
    durable commits (never wanted for a throwaway) they take 2 s instead of 8."""
    import mlflow
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def no_sync(connection, _record):
        connection.execute("PRAGMA synchronous=OFF")

    event.listen(Engine, "connect", no_sync)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/m.db")
    yield mlflow
    while mlflow.active_run() is not None:
        mlflow.end_run()
    event.remove(Engine, "connect", no_sync)


def test_mlflow_model_uri(mlflow_store, cluster, route_dir):
    mlflow = mlflow_store
    client = mlflow.MlflowClient()
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(route_dir), "policy")
    try:
        version = mlflow.register_model(f"runs:/{run.info.run_id}/policy", "dualpath-scheduler")
    except mlflow.exceptions.MlflowException:
        # MLflow 3 registers only logged models from runs:/ URIs (it creates the name first).
        version = client.create_model_version(
            "dualpath-scheduler", source=f"{run.info.artifact_uri}/policy",
            run_id=run.info.run_id)
    client.set_registered_model_alias("dualpath-scheduler", "champion", version.version)

    for uri in ("models:/dualpath-scheduler@champion",
                f"models:/dualpath-scheduler/{version.version}"):
        resolved = resolve_policy(uri, cluster)
        assert isinstance(resolved.policy, LearnedRouter)
        assert resolved.policy.artifact.source == uri
        result = Simulator(cluster, AgenticWorkload(2, "32k", 0)).run(resolved.policy)
        assert result.metrics["requests"] > 0

    with pytest.raises(ValueError, match=r"^policy spec 'models:/dualpath-scheduler@nope': "
                                         r"models:/dualpath-scheduler@nope: cannot download it "
                                         r"\(.*alias nope not found"):
        resolve_policy("models:/dualpath-scheduler@nope", cluster)
    with pytest.raises(ValueError, match="models:/unknown/1: cannot download it"):
        resolve_policy("models:/unknown/1", cluster)
    with pytest.raises(ValueError, match="expected models:/NAME@ALIAS or models:/NAME/VERSION"):
        resolve_policy("models:/dualpath-scheduler", cluster)


def test_router_exposes_its_logits_as_scores(cluster, route_dir):
    router = LearnedRouter(load_artifact(route_dir), cluster)
    sim = Simulator(cluster, AgenticWorkload(AGENTS, "32k", seed=0))
    request, view = sim.next_decision()
    answer = router.decide(request, view)
    assert isinstance(answer, Decision)
    scores = router.last_scores
    assert scores is not None and len(scores) == sum(router.artifact.action_nvec)
    assert all(isinstance(s, float) for s in scores)
