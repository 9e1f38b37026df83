"""Fan-out: results in input order, progress, failures naming the item, local vs Ray."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from experiments.evaluation import fanout
from experiments.evaluation.fanout import local, make_fanout, ray_fanout
from experiments.evaluation.runner import RunConfig, run
from tests.requirements import require_module

NONDETERMINISTIC = ("wall_s", "sim_requests_per_s")
POLICIES = ("dualpath", "round_robin", "least_tokens")


# Module level, so spawned processes and Ray workers can import them.
def _square(x: int) -> int:
    time.sleep(0.01 * (x % 3))  # finish out of order
    return x * x


def _fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError(f"bad item {x}")
    return x


def _notes(exc: BaseException) -> str:
    return "\n".join(getattr(exc, "__notes__", []))


def _stable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in NONDETERMINISTIC}


@pytest.mark.parametrize("jobs", [1, 2])
def test_local_maps_in_input_order_with_progress(jobs):
    items = list(range(7))
    calls: list[tuple[int, int]] = []
    with local(jobs) as f:
        assert (f.name, f.workers) == ("local", max(jobs, 1))
        assert f.map(_square, items, progress=lambda d, n: calls.append((d, n))) == [
            x * x for x in items]
        assert f.map(_square, []) == []  # the pool is reused, and empty input is fine
    assert calls == [(k, len(items)) for k in range(1, len(items) + 1)]


@pytest.mark.parametrize("jobs", [1, 2])
def test_local_failure_names_the_item(jobs):
    with local(jobs) as f, pytest.raises(ValueError, match="bad item 3") as info:
        f.map(_fail_on_three, [1, 2, 3, 4])
    assert "_fail_on_three failed on item 2 of 4: 3" in _notes(info.value)


def test_make_fanout_without_ray_address_is_local():
    with make_fanout() as f:
        assert (f.name, f.workers) == ("local", 1)
    f = make_fanout(jobs=3)
    assert (f.name, f.workers) == ("local", 3)
    f.close()
    f.close()  # idempotent


def test_ray_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail
    with pytest.raises(ImportError, match=r'optional extra: pip install -e "\.\[ray\]"'):
        ray_fanout("local")


def test_num_cpus_only_sizes_a_local_instance():
    with pytest.raises(ValueError, match="only sizes a local Ray instance"):
        ray_fanout("auto", num_cpus=2)


@pytest.fixture(scope="module")
def ray_local():
    require_module("ray")
    started = time.perf_counter()
    with ray_fanout("local", num_cpus=2) as f:
        print(f"\nray local instance started in {time.perf_counter() - started:.1f} s")
        yield f
    import ray
    assert not ray.is_initialized()  # the instance we started is shut down


def test_ray_runs_the_simulator_like_local(ray_local):
    configs = [RunConfig(preset="tiny", agents=4, mal="32k", policy=p) for p in POLICIES]
    assert (ray_local.name, ray_local.workers) == ("ray", 2)

    started = time.perf_counter()
    expected = local(1).map(run, configs)
    local_s = time.perf_counter() - started

    calls: list[tuple[int, int]] = []
    started = time.perf_counter()
    got = ray_local.map(run, configs, progress=lambda d, n: calls.append((d, n)))
    ray_s = time.perf_counter() - started

    assert [r["policy"] for r in got] == list(POLICIES)
    assert [_stable(r) for r in got] == [_stable(r) for r in expected]
    assert calls == [(1, 3), (2, 3), (3, 3)]
    print(f"3 tiny runs: local(1) {local_s:.2f} s, ray (2 CPUs) {ray_s:.2f} s, "
          f"overhead {ray_s - local_s:+.2f} s")


def test_ray_failure_names_the_item(ray_local):
    with pytest.raises(ValueError, match="bad item 3") as info:
        ray_local.map(_fail_on_three, [1, 2, 3, 4])
    assert "_fail_on_three failed on item 2 of 4: 3" in _notes(info.value)
    assert ray_local.map(_square, [4, 5]) == [16, 25]  # still usable afterwards


def _mark_or_fail(item: tuple[str, int]) -> int:
    """Item 0 fails at once; the others leave a file named by their index."""
    folder, index = item
    if index == 0:
        raise ValueError("first item fails")
    time.sleep(1.0)
    Path(folder, str(index)).touch()
    return index


def test_ray_submits_nothing_after_a_failure(ray_local, tmp_path):
    """At most ``workers`` tasks are in flight: after the first fails, the rest never
    start (and nothing is cancelled under a task as it finishes)."""
    items = [(str(tmp_path), i) for i in range(12)]
    with pytest.raises(ValueError, match="first item fails"):
        ray_local.map(_mark_or_fail, items)
    time.sleep(2.0)  # the tasks that were running when it failed finish
    # The first batch (item 0 and one more), and at most one submitted should item 1
    # finish before item 0's failure comes back on a slow machine.
    assert len(list(tmp_path.iterdir())) <= ray_local.workers
    assert ray_local.map(_square, [3]) == [9]


def test_ray_fanout_reuses_an_existing_connection(ray_local):
    other = ray_fanout("local")  # already connected: used as is, not shut down on close
    other.close()
    import ray
    assert ray.is_initialized()
    assert ray_local.map(_square, [2]) == [4]


def test_fanout_module_documents_the_contract():
    doc = fanout.__doc__ or ""
    for phrase in ("MLflow", "working_dir", ".[ray]", "spawn"):
        assert phrase in doc
