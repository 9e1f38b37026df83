"""``dualpath bench cache-events``: a short flood against a real ``dualpath serve``."""

from __future__ import annotations

from experiments.bench.cache_events import bench_cache_events, render_cache_events


def test_a_flood_gets_statuses_and_leaves_the_server_serving():
    payload = bench_cache_events(seconds=1.5)
    kinds = payload["kinds"]
    assert set(kinds["steady"]["statuses"]) == {"OK"} and kinds["steady"]["calls"] > 0
    # Stores nothing evicts: taken until the cache would overflow, then refused.
    assert kinds["hoarding"]["statuses"].get("OK", 0) > 0
    assert kinds["hoarding"]["statuses"].get("INVALID_ARGUMENT", 0) > 0
    assert set(kinds["malformed"]["statuses"]) == {"INVALID_ARGUMENT"}
    assert payload["served_after"]["policy_version"].startswith("v1:")
    assert "calls/s" in render_cache_events(payload)
