"""Encoding version 2: what it adds to version 1, and the queue part of the action."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import env  # noqa: F401 - registers DualPath-v0
from agents.heuristics import DualPath
from env.encoding import PARTS, QUEUE_CHOICES, Encoder, Encoding
from runtime.preset import load_preset
from runtime.sim import Simulator
from runtime.workload.agentic import AgenticWorkload

CACHED = load_preset("ds27b-1p1d", ["node.dram_cache_gb=8", "node.hbm_cache_gb=1"])


def test_version_2_starts_with_version_1s_features() -> None:
    sim = Simulator(CACHED, AgenticWorkload(8, "32k", 0))
    old, new = Encoder(Encoding(version=1), CACHED), Encoder(Encoding(), CACHED)
    policy = DualPath()
    seen_cache = False
    while (point := sim.next_decision()) is not None:
        request, view = point
        a, b = old.observe(request, view), new.observe(request, view)
        assert b.shape[0] > a.shape[0]
        np.testing.assert_array_equal(a, b[:a.shape[0]])
        seen_cache |= bool(view.prefix is not None and view.prefix.anywhere
                           and b[a.shape[0]:].any())
        sim.apply(policy.decide(request, view))
    assert seen_cache


def test_bad_encodings_are_refused() -> None:
    with pytest.raises(ValueError, match="queue part needs encoding version 2"):
        Encoding(version=1, control=PARTS)
    with pytest.raises(ValueError, match="version 3 is not one this code encodes"):
        Encoding(version=3)
    with pytest.raises(ValueError, match="artifact was trained with encoding version 9"):
        Encoding.from_json({"version": 9})


def test_the_queue_part_places_a_request_behind_the_head() -> None:
    # Little decode HBM: requests wait for room, so the queue holds several.
    small = load_preset("ds27b-1p1d", ["node.dram_cache_gb=8", "node.de_hbm_kv_gb=0.7"])
    e = gym.make("DualPath-v0", preset=small, encoding=Encoding(control=PARTS),
                 workload=lambda seed: AgenticWorkload(24, "32k", seed))
    e.reset(seed=0)
    sim = e.unwrapped.sim
    assert e.action_space.nvec[-1] == QUEUE_CHOICES
    behind = 0
    for _ in range(200):
        mask = e.unwrapped.action_masks()
        queue_mask = mask[-QUEUE_CHOICES:]
        action = []
        at = 0
        for n in e.action_space.nvec[:-1]:
            action.append(int(np.flatnonzero(mask[at:at + n])[0]))
            at += n
        choice = 1 if queue_mask[1] else 0
        waiting = sim.candidates(QUEUE_CHOICES)
        assert queue_mask.sum() == len(waiting)
        _, _, done, _, _ = e.step(np.array([*action, choice]))
        after = {r.request_id for r in sim.candidates(len(sim.waiting.items) + 1)}
        if choice and waiting[1].request_id not in after:
            behind += 1
            assert waiting[0].request_id in after  # the head was passed over, still waits
        if done:
            break
    assert behind > 0
