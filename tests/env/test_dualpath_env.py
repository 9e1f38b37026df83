"""DualPathEnv: registration, the env checkers, determinism, reward, masks, fallback, tuning."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import env
from env import DualPathEnv, Encoding, Tuning
from runtime.decision import Decision, Defer, WaitFor
from runtime.preset import load_preset
from runtime.workload.agentic import AgenticWorkload
from tests.builders import make_spec


def random_valid(e: DualPathEnv, rng: np.random.Generator) -> np.ndarray:
    mask = e.action_masks()
    action, at = [], 0
    for n in e.action_space.nvec:
        action.append(int(rng.choice(np.flatnonzero(mask[at:at + n]))))
        at += n
    return np.array(action)


def rollout(e: DualPathEnv, seed: int, steps: int | None = None):
    obs, _ = e.reset(seed=seed)
    rng = np.random.default_rng(seed)
    trace, rewards, info, done = [obs], [], {}, False
    while not done and (steps is None or len(rewards) < steps):
        obs, reward, done, _, info = e.step(random_valid(e, rng))
        trace.append(obs)
        rewards.append(reward)
    return trace, rewards, info


class FirstFit:
    """Engine 0 and the first decode engine with room; share fixed; defers when none has room."""

    name = "first_fit"

    def __init__(self, share: float = 0.0) -> None:
        self.share = share
        self.completed: list[int] = []

    def decide(self, request, view):
        need = request.total_tokens * view.spec.model.kv_bytes_per_token
        for d in view.decode_engines():
            if d.free_hbm_bytes >= need and d.seq < view.spec.decode_max_batch:
                return Decision(0, d.engine_id, self.share)
        return Defer("full", WaitFor.DECODE)

    def complete(self, request_id, outcome):
        self.completed.append(request_id)


def test_make_with_no_arguments_and_episode_limit():
    e = gym.make(env.ENV_ID)
    assert e.spec is not None and e.spec.max_episode_steps == env.MAX_EPISODE_STEPS
    base = e.unwrapped
    assert isinstance(base, DualPathEnv) and base.cluster.name == "ds27b-1p1d"
    obs, _ = e.reset(seed=0)
    assert obs.shape == base.observation_space.shape and obs.dtype == np.float32


def test_passes_gymnasium_and_sb3_checkers():
    check_env(DualPathEnv(agents=4), skip_render_check=True)
    sb3_check_env(DualPathEnv(agents=4), warn=True)
    tune = DualPathEnv(agents=4, mode="tune", tunable=lambda p: FirstFit(p["split"]))
    check_env(tune, skip_render_check=True)


def test_same_seed_same_rollout_and_different_seed_differs():
    a = rollout(DualPathEnv(agents=6), seed=3, steps=300)
    b = rollout(DualPathEnv(agents=6), seed=3, steps=300)
    c = rollout(DualPathEnv(agents=6), seed=4, steps=300)
    assert len(a[0]) == len(b[0])
    assert all(np.array_equal(x, y) for x, y in zip(a[0], b[0], strict=True))
    assert a[1] == b[1]
    assert a[1] != c[1]


def test_return_is_minus_total_time_in_system_scaled():
    scale = 0.5
    _, rewards, info = rollout(DualPathEnv(agents=4, reward_scale=scale), seed=1)
    m = info["metrics"]
    total_latency = m["latency_mean_s"] * m["requests"]
    assert m["requests"] > 0 and total_latency > 0
    assert sum(rewards) == pytest.approx(-scale * total_latency, rel=1e-6)


def test_slo_penalty_counts_violations():
    # A 0.2 s TTFT target that some requests of this run miss and most meet.
    spec = load_preset("ds27b-1p1d", ["slo_ttft_s=0.2"])
    base = rollout(DualPathEnv(spec, agents=4), seed=2)
    penalised = rollout(DualPathEnv(spec, agents=4, slo_penalty=1.0), seed=2)
    violations = penalised[2]["slo_violations"]
    assert 0 < violations < penalised[2]["metrics"]["requests"]
    assert violations == base[2]["slo_violations"]
    assert sum(penalised[1]) == pytest.approx(sum(base[1]) - violations)


def test_decode_mask_excludes_engines_without_room():
    spec = make_spec(1, 1, gpus=4, de_hbm_kv_gb=1.0, decode_max_batch=2)
    e = DualPathEnv(spec, workload=lambda seed: AgenticWorkload(12, "32k", seed),
                    encoding=Encoding(max_prefill=4, max_decode=4, max_nodes=2))
    e.reset(seed=0)
    rng = np.random.default_rng(0)
    checked = 0
    done = False
    while not done:
        mask = e.action_masks()
        request, view = e._point
        need = request.total_tokens * spec.model.kv_bytes_per_token
        room = [d.free_hbm_bytes >= need and d.seq < 2 for d in view.decode_engines()]
        assert list(mask[4:8]) == room and any(room)
        assert mask[:4].all()
        levels = mask[8:]
        assert levels.all() if request.hit_tokens else (levels[0] and not levels[1:].any())
        checked += 1
        _, _, done, _, _ = e.step(random_valid(e, rng))
    assert checked > 20


def test_masked_out_action_maps_to_next_valid_choice():
    e = DualPathEnv(agents=2)
    e.reset(seed=0)
    mask = e.action_masks()
    assert not mask[8]  # ds27b-1p1d has 8 prefill engines; slot 8 is padding
    level = 2 if e._point[0].hit_tokens else 0  # a first turn has no hits: share 0 only
    assert e.encoder.project([8, 3, 2], mask) == [0, 3, level]
    assert e.encoder.project([8, 3, 2], np.ones_like(mask)) == [8, 3, 2]


def test_fallback_decides_what_the_agent_does_not_control():
    fallback = FirstFit(share=0.0)
    e = DualPathEnv(agents=3, encoding=Encoding(control=("path",)), fallback=fallback)
    assert list(e.action_space.nvec) == [5]
    e.reset(seed=0)
    first = e._hint
    assert first is not None and first.prefill_engine == 0
    _, rewards, info = rollout(e, seed=0)
    assert info["metrics"]["requests"] == len(fallback.completed) > 0
    assert info["metrics"]["read_bytes_de_side"] > 0  # the agent's shares were applied


def test_partial_control_without_fallback_is_refused():
    with pytest.raises(ValueError, match="fallback"):
        DualPathEnv(encoding=Encoding(control=("decode", "path")))


def test_tuning_mode_sets_parameters_per_window():
    made: list[dict[str, float]] = []

    def tunable(params):
        made.append(params)
        return FirstFit(params["split"])

    tuning = Tuning(levels=(("split", (0.0, 1.0)),), window_s=5.0)
    e = DualPathEnv(agents=4, mode="tune", tuning=tuning, tunable=tunable)
    assert list(e.action_space.nvec) == [2]
    e.reset(seed=0)
    times = []
    done = False
    while not done:
        _, _, done, _, info = e.step(np.array([len(made) % 2]))
        times.append(info["time_s"])
    assert len(made) == len(times) > 3
    assert [p["split"] for p in made[:4]] == [0.0, 1.0, 0.0, 1.0]
    assert all(b - a >= 5.0 - 1e-9 for a, b in zip(times, times[1:-1], strict=False))


def test_tuning_mode_needs_a_tunable():
    with pytest.raises(ValueError, match="tunable"):
        DualPathEnv(mode="tune")


def test_other_presets_fit_the_padding_and_too_large_ones_are_refused():
    e = DualPathEnv("ds27b-2p1d", agents=2)
    obs, _ = e.reset(seed=0)
    assert obs[:16 * 7].reshape(16, 7)[:, 0].sum() == 16  # 16 prefill slots present
    with pytest.raises(ValueError, match="prefill engines"):
        DualPathEnv("ds660b-2p4d", encoding=Encoding(max_prefill=8))
    DualPathEnv("ds660b-2p4d", agents=2).reset(seed=0)  # the defaults fit the largest preset


@pytest.mark.parametrize("bad", [{"reward_scale": 0.0}, {"slo_penalty": -1.0},
                                 {"mode": "fly"}])
def test_bad_arguments_are_refused(bad):
    with pytest.raises(ValueError):
        DualPathEnv(**bad)


def test_counterfactual_baseline_reward_is_zero_for_the_baseline_itself():
    def tunable(params):
        return FirstFit(params["split"])

    tuning = Tuning(levels=(("split", (0.0, 1.0)),), window_s=5.0)
    e = DualPathEnv(agents=4, mode="tune", tuning=tuning, tunable=tunable,
                    baseline={"split": 0.0})
    e.reset(seed=0)
    same, other, done = [], [], False
    while not done:
        action = len(same) % 2
        _, reward, done, _, _ = e.step(np.array([action]))
        (other if action else same).append(reward)
    assert same and all(r == pytest.approx(0.0, abs=1e-9) for r in same)
    assert any(abs(r) > 1e-6 for r in other)  # a different choice does move the reward
    with pytest.raises(ValueError, match="tuning mode"):
        DualPathEnv(baseline={"split": 0.0})
