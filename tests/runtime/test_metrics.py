"""Window accounting of link traffic, and the SNIC balance metric."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.execution.link import Link, reserve_pair
from runtime.execution.metrics import snic_max_over_avg, window_bytes


def test_window_bytes_splits_transfers_across_windows():
    link = Link("l", 100.0)
    link.reserve(0.5, 100.0)   # 0.5 .. 1.5
    link.reserve(0.0, 50.0)    # queued behind: 1.5 .. 2.0
    carried = window_bytes(link, np.array([0.0, 1.0, 2.0, 3.0]))
    assert carried == pytest.approx([50.0, 100.0, 0.0])


def test_overhead_holds_the_link_without_carrying_bytes():
    link = Link("l", 100.0)
    start, end = link.reserve(0.0, 100.0, overhead_s=1.0)
    assert (start, end) == (0.0, 2.0)
    assert window_bytes(link, np.array([0.0, 1.0, 2.0])) == pytest.approx([50.0, 50.0])


def test_multi_hop_transfer_ends_with_its_slowest_hop():
    fast, slow = Link("fast", 100.0), Link("slow", 10.0)
    slow.reserve(0.0, 10.0)  # busy until 1.0
    assert reserve_pair(fast, slow, 0.0, 10.0) == (1.0, 2.0)
    assert fast.busy_until == pytest.approx(0.1)


def test_snic_balance_is_max_over_mean_per_busy_window():
    a, b = Link("a", 100.0), Link("b", 100.0)
    a.reserve(0.0, 100.0)          # window 0: a=100, b=0 -> 2.0
    a.reserve(1.0, 50.0)           # window 1: a=50, b=50 -> 1.0
    b.reserve(1.0, 50.0)
    # window 2 has no traffic and does not count
    assert snic_max_over_avg([a, b], 0.0, 3.0) == pytest.approx(1.5)
