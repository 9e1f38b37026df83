"""What ``engine="model"`` changes about a live run, in one place.

The cluster's model takes the real transformer's shape (its layers and KV bytes per
token), so the blocks storage holds, both paths read and the transports move are that
model's KV at scale 1. Only requests whose hit KV the run itself computes can run:
an agent's turns (each turn hits its earlier turns, which this run prefilled and
decoded) and served requests (hits are blocks earlier prompts wrote). Cluster caches
are not modelled with real KV yet.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from runtime.cluster import ClusterSpec
from runtime.live.config import LiveOptions

if TYPE_CHECKING:
    from runtime.transformer import TransformerConfig


def model_config(opts: LiveOptions) -> TransformerConfig:
    """The model engine's transformer (``model_size``, ``model_dtype``, ``model_seed``)."""
    from runtime.transformer import config_for  # torch: only where the model engine runs

    return config_for(opts.model_size, dtype=opts.model_dtype, seed=opts.model_seed)


def model_overrides(opts: LiveOptions) -> tuple[str, ...]:
    """Preset overrides that give a cluster the real model's shape (none when emulated):
    what a simulator or a scheduler service of the same run must see too."""
    if opts.engine != "model":
        return ()
    config = model_config(opts)
    return (f"model.layers={config.layers}",
            f"model.kv_bytes_per_token={config.kv_bytes_per_token}")


def spec_for_model(spec: ClusterSpec, opts: LiveOptions) -> ClusterSpec:
    """``spec`` with its model's layers and KV bytes per token those of the real model."""
    if opts.engine != "model":
        return spec
    check_memory(opts)
    if spec.has_cache:
        raise ValueError("engine 'model': cluster caches (HBM/DRAM) are not supported with "
                         "real KV yet; run a preset without [cache]")
    config = model_config(opts)
    model = dataclasses.replace(spec.model, layers=config.layers,
                                kv_bytes_per_token=config.kv_bytes_per_token)
    return dataclasses.replace(spec, model=model)


def check_memory(opts: LiveOptions) -> None:
    """Refuse, naming sizes, a model whose weights do not fit the engines' device."""
    from runtime.transformer import check_fits, device_memory_bytes

    device = "cuda" if opts.device == "cuda" else "cpu"
    check_fits(model_config(opts), device_memory_bytes(device),
               where=f"this host's {'GPU' if device == 'cuda' else 'memory'}")


def check_workload(opts: LiveOptions, workload: object, spec: ClusterSpec) -> None:
    """Refuse, with the reason, a workload the model engine cannot run."""
    from runtime.serving.served import ServedWorkload
    from runtime.workload.agentic import AgenticWorkload

    if opts.engine != "model":
        return
    if not isinstance(workload, AgenticWorkload | ServedWorkload):
        raise ValueError(f"engine 'model' computes every hit block itself, so only requests "
                         f"whose hits this run computed can run: agents' turns and served "
                         f"requests, not {type(workload).__name__} (a trace's or a log's "
                         f"hits are KV it never computed)")
    longest = getattr(workload, "max_context_tokens", None)
    limit = model_config(opts).max_context
    if longest is not None and longest > limit:
        raise ValueError(f"engine 'model': the workload's contexts reach {longest:,} tokens, "
                         f"past the model's context of {limit:,}")
