"""Benchmarks, one module each: the simulator's requests per second (:mod:`.sim`), env steps
and policy decisions per second (:mod:`.env_steps`), one-sided transport bandwidth
between two processes (:mod:`.transport`), the scheduler service's latency and
throughput (:mod:`.service`) and its behaviour under minutes of load with policy swaps
(:mod:`.soak`)."""
