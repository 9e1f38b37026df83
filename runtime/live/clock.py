"""Model time on a wall clock: the one place that converts between the two.

The live cluster runs ``time_scale`` times slower than the modelled one, so a
small machine can keep up: a modelled second lasts ``time_scale`` wall seconds.
Every process of a run shares ``t0`` (a ``time.monotonic()`` reading, which is
system-wide on Linux, network namespaces included), so model times agree
across processes and can be sent in messages.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Clock:
    """``now()`` is model seconds since ``t0``; ``sleep_until`` waits for a model time."""

    time_scale: float
    t0: float

    def __post_init__(self) -> None:
        if not self.time_scale > 0:
            raise ValueError(f"time_scale must be > 0, got {self.time_scale}")

    def now(self) -> float:
        return (time.monotonic() - self.t0) / self.time_scale

    def wall_s(self, model_s: float) -> float:
        """Wall seconds a span of ``model_s`` model seconds lasts."""
        return model_s * self.time_scale

    async def sleep_until(self, model_t: float) -> None:
        delay = model_t * self.time_scale + self.t0 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    async def sleep(self, model_s: float) -> None:
        if model_s > 0:
            await asyncio.sleep(model_s * self.time_scale)
