"""Fan-out of independent runs over local processes or a Ray cluster.

Sweeps and training hand a top-level function and a list of items to
:func:`make_fanout`'s ``map``; results come back in input order::

    with make_fanout(jobs=4) as fanout:             # or ray_address="auto"
        rows = fanout.map(run, configs, progress=report)

Backends:

* ``local(jobs)``: ``jobs <= 1`` runs in this process; otherwise a pool of
  ``jobs`` processes started with *spawn* (fork is unsafe once torch, gRPC or
  MLflow threads live in the parent), so ``fn`` and the items must pickle and
  ``fn`` must be importable (a module-level function, not a lambda or closure);
  a script that fans out needs the ``if __name__ == "__main__":`` guard.
* ``ray_fanout(address)``: one Ray task (``num_cpus=1``) per item. Ray is an
  optional extra: ``pip install -e ".[ray]"``. ``address`` is ``"local"`` (start
  a private Ray instance here, shut down on close), ``"auto"`` (the running
  cluster Ray finds, e.g. through ``RAY_ADDRESS``), ``"HOST:PORT"`` (a cluster's
  GCS, from a node of it) or ``"ray://HOST:PORT"`` (Ray Client). When connecting
  to an existing cluster, whose workers may sit on other machines, this source
  tree is shipped to them as ``runtime_env={"working_dir": ...}`` (files named
  by ``.gitignore`` and ``.git`` are left out); the nodes must already have the
  project's dependencies for the same Python version. A local instance imports
  from this environment, so nothing is shipped.

Contract for ``fn``: it runs in another process (or machine) and must return
plain, picklable results. Only the calling process may write to MLflow (or any
other shared store): workers return their metrics and the caller logs them,
so runs are never half-logged from a worker and one tracking URI serves all.

``progress(done, total)`` is called in the calling process each time a result
comes in, ending at ``(total, total)``. The first failure cancels what has not
started and is raised as the original exception, with a note naming the item.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")

Progress = Callable[[int, int], None]

RAY_MISSING = ('Ray is not installed; it is an optional extra: pip install -e ".[ray]" '
               '(or pip install "ray>=2.40")')
# Kept small: results are small dicts, and the default (30% of RAM) is wasteful.
LOCAL_RAY_OBJECT_STORE_BYTES = 100 * 1024 * 1024
_MAX_ITEM_REPR = 300


class Fanout(Protocol):
    """Runs ``fn`` over independent items in parallel slots."""

    name: str     # "local" or "ray"
    workers: int  # parallel slots: processes, or the Ray cluster's CPUs

    def map(self, fn: Callable[[T], R], items: Sequence[T],
            progress: Progress | None = None) -> list[R]:
        """``[fn(x) for x in items]`` in input order; see the module docstring."""
        ...

    def close(self) -> None:
        """Release the workers; idempotent."""
        ...

    def __enter__(self) -> Fanout:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _name_item(exc: BaseException, fanout: str, fn: Callable[..., Any], index: int,
               total: int, item: object) -> BaseException:
    """Add a note naming the failing item, so a sweep's traceback says which run broke."""
    text = repr(item)
    if len(text) > _MAX_ITEM_REPR:
        text = text[:_MAX_ITEM_REPR - 3] + "..."
    fn_name = getattr(fn, "__qualname__", repr(fn))
    exc.add_note(f"fanout ({fanout}): {fn_name} failed on item {index} of {total}: {text}")
    return exc


class _InProcess(Fanout):
    """``jobs <= 1``: a plain loop here (easiest to debug, no pickling)."""

    name = "local"
    workers = 1

    def map(self, fn: Callable[[T], R], items: Sequence[T],
            progress: Progress | None = None) -> list[R]:
        results: list[R] = []
        for index, item in enumerate(items):
            try:
                results.append(fn(item))
            except Exception as exc:
                _name_item(exc, self.name, fn, index, len(items), item)
                raise
            if progress is not None:
                progress(index + 1, len(items))
        return results

    def close(self) -> None:
        pass


class _ProcessPool(Fanout):
    """A spawn-started process pool, created on the first ``map`` and kept until close."""

    name = "local"

    def __init__(self, jobs: int) -> None:
        self.workers = jobs
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def map(self, fn: Callable[[T], R], items: Sequence[T],
            progress: Progress | None = None) -> list[R]:
        if not items:
            return []
        pool = self._executor()
        futures = {pool.submit(fn, item): index for index, item in enumerate(items)}
        results: list[Any] = [None] * len(items)
        pending: set[Future[R]] = set(futures)
        finished = 0
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    index = futures[future]
                    exc = future.exception()
                    if isinstance(exc, BrokenProcessPool):
                        raise exc  # a worker died: every item fails, none is to blame
                    if exc is not None:  # its __cause__ holds the worker's traceback
                        raise _name_item(exc, self.name, fn, index, len(items), items[index])
                    results[index] = future.result()
                    finished += 1
                    if progress is not None:
                        progress(finished, len(items))
        except BaseException as exc:
            for future in pending:
                future.cancel()  # running ones finish; close() waits for them
            if isinstance(exc, BrokenProcessPool):
                self.close()  # a dead worker breaks the pool; the next map starts a new one
            raise
        return results

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def local(jobs: int) -> Fanout:
    """``jobs`` parallel processes on this machine; ``jobs <= 1`` runs in this process."""
    return _InProcess() if jobs <= 1 else _ProcessPool(jobs)


def map_local(fn: Callable[[T], R], items: Sequence[T], jobs: int) -> list[R]:
    """``[fn(x) for x in items]`` in at most ``jobs`` local processes (here when one will
    do), in input order; the pool lives for this call only."""
    with local(min(jobs, len(items))) as fanout:
        return fanout.map(fn, items)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError(RAY_MISSING) from exc
    return ray


def _source_tree() -> Path | None:
    """The checkout holding this package, or None when it is installed as a package."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else None


def _apply(fn: Callable[[T], R], item: T) -> R:
    """The Ray task body: one item through ``fn`` (module level, so workers import it)."""
    return fn(item)


class _Ray(Fanout):
    """One Ray task per item; ``close`` shuts down an instance it started, else disconnects."""

    name = "ray"

    def __init__(self, ray: Any, owns_connection: bool) -> None:
        self._ray = ray
        self._owns = owns_connection
        self._task = ray.remote(num_cpus=1)(_apply)
        self.workers = max(1, int(ray.cluster_resources().get("CPU", 0)))

    def map(self, fn: Callable[[T], R], items: Sequence[T],
            progress: Progress | None = None) -> list[R]:
        """At most ``workers`` tasks in flight, the next submitted as one finishes: after a
        failure nothing more is submitted, and the tasks still running finish on their
        own (their results are dropped). Nothing is ``ray.cancel``-ed: cancelling a task
        as it completes can abort this process (a failed internal check in Ray 2.x)."""
        ray = self._ray
        results: list[Any] = [None] * len(items)
        index_of: dict[Any, int] = {}
        waiting = iter(range(len(items)))
        pending: list[Any] = []
        for index in itertools.islice(waiting, self.workers):
            pending.append(self._submit(fn, items, index, index_of))
        finished = 0
        while pending:
            # One at a time, so progress is reported as each task finishes.
            (ref,), pending = ray.wait(pending, num_returns=1)
            index = index_of.pop(ref)
            try:
                results[index] = ray.get(ref)
            except ray.exceptions.RayError as err:
                cause = _name_item(_unwrap(err), self.name, fn, index, len(items),
                                   items[index])
                if cause is err:  # not the task's own error (a crash, a lost object)
                    raise
                raise cause from err
            finished += 1
            if progress is not None:
                progress(finished, len(items))
            for index in itertools.islice(waiting, 1):
                pending.append(self._submit(fn, items, index, index_of))
        return results

    def _submit(self, fn: Callable[[T], R], items: Sequence[T], index: int,
                index_of: dict[Any, int]) -> Any:
        ref = self._task.remote(fn, items[index])
        index_of[ref] = index
        return ref

    def close(self) -> None:
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
        self._owns = False


def _unwrap(err: BaseException) -> BaseException:
    """A task's own exception (its remote traceback stays in ``err``, chained as the cause)."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, BaseException) else err


def ray_fanout(address: str, *, num_cpus: int | None = None) -> Fanout:
    """Connect to (or start) Ray; see the module docstring for ``address``.

    ``num_cpus`` sizes a ``"local"`` instance (default: all of this machine's
    CPUs); an existing cluster has its own size, so it is refused there. If
    this process is already connected to Ray (say, by the caller), that
    connection is used as is and left open on close.
    """
    if not address:
        raise ValueError('ray address is empty: use "auto", "local", HOST:PORT or ray://HOST:PORT')
    if num_cpus is not None and address != "local":
        raise ValueError(f"num_cpus={num_cpus} only sizes a local Ray instance "
                         f'(address "local"); the cluster at {address!r} has its own CPUs')
    ray = _import_ray()
    if ray.is_initialized():
        return _Ray(ray, owns_connection=False)
    if address == "local":
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 log_to_driver=False, object_store_memory=LOCAL_RAY_OBJECT_STORE_BYTES)
    else:
        ray.init(address=address, log_to_driver=False, runtime_env=_remote_runtime_env())
    return _Ray(ray, owns_connection=True)


def _remote_runtime_env() -> dict[str, Any] | None:
    """Ship this checkout to a cluster's workers (which may be on other machines)."""
    root = _source_tree()
    if root is None:  # installed as a package: the cluster must have it installed too
        return None
    return {"working_dir": os.fspath(root), "excludes": [".git"]}


def make_fanout(jobs: int = 1, ray_address: str | None = None) -> Fanout:
    """The CLI's choice: Ray when ``--ray-address`` is given, else ``--jobs`` local processes."""
    if ray_address is not None:
        return ray_fanout(ray_address)
    return local(jobs)
