"""The gymnasium environment over the dual-path cluster; importing registers ``DualPath-v0``."""

from gymnasium.envs.registration import register, registry

from env.dualpath_env import DualPathEnv, Mode
from env.encoding import ENCODING_VERSION, Encoder, Encoding
from env.tuning import Tuning

ENV_ID = "DualPath-v0"
#: Default episodes (16 agents, 32K set) take a few thousand steps; the limit only
#: stops runaway configurations.
MAX_EPISODE_STEPS = 200_000

if ENV_ID not in registry:
    register(id=ENV_ID, entry_point="env.dualpath_env:DualPathEnv",
             max_episode_steps=MAX_EPISODE_STEPS)

__all__ = ["ENCODING_VERSION", "ENV_ID", "DualPathEnv", "Encoder", "Encoding", "Mode", "Tuning"]
