"""Live-cluster glue: a live run of real processes from a plain config and the
simulator-vs-live fidelity table (:mod:`.runs`), live clusters under injected faults
(:mod:`.stress`), and ``dualpath serve`` started and stopped as a child process
(:mod:`.service_process`)."""
