"""Latency classes: what a request is promised.

``interactive`` (the default) has the cluster's targets, ``slo_ttft_s`` for the time
to first token and ``slo_tpot_s`` per output token; ``batch`` has none (it is
served when there is room, and always counts as within its target).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runtime.cluster import ClusterSpec

INTERACTIVE = "interactive"
BATCH = "batch"
#: Every class, the default first.
CLASSES = (INTERACTIVE, BATCH)


def check_class(name: object, where: str) -> str:
    """``name`` if it is a class, else a ValueError naming ``where``."""
    if name not in CLASSES:
        raise ValueError(f"{where}: unknown latency class {name!r}; choose one of "
                         f"{', '.join(CLASSES)}")
    return str(name)


def ttft_target_s(spec: ClusterSpec, slo_class: str) -> float:
    """The class's time-to-first-token target (infinite: none)."""
    return spec.slo_ttft_s if slo_class == INTERACTIVE else math.inf


def tpot_target_s(spec: ClusterSpec, slo_class: str) -> float:
    """The class's time-per-output-token target (infinite: none)."""
    return spec.slo_tpot_s if slo_class == INTERACTIVE else math.inf
