"""What both executions run on: the simulator (:mod:`runtime.sim`) and the live runtime
(:mod:`runtime.live`).

- :mod:`~runtime.execution.job`: a request's record inside an execution (``Job``, ``outcome``);
- :mod:`~runtime.execution.link`: a FIFO link at a fixed bandwidth (``Link``, ``reserve_pair``);
- :mod:`~runtime.execution.prefill`, :mod:`~runtime.execution.decode`: the batch formers
  of the prefill and decode engines;
- :mod:`~runtime.execution.recorder`, :mod:`~runtime.execution.metrics`: what is written
  down about finished requests and the run's metrics;
- :mod:`~runtime.execution.executor`: the stepping protocol (``Executor``) both implement.

A change here changes both executions.
"""

from runtime.execution.executor import Executor, Result
from runtime.execution.job import Job, outcome
from runtime.execution.link import Link, reserve_pair
from runtime.execution.metrics import summarize
from runtime.execution.recorder import Recorder

__all__ = ["Executor", "Job", "Link", "Recorder", "Result", "outcome", "reserve_pair", "summarize"]
