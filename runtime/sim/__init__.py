"""The discrete-event simulator (virtual time) of the dual-path cluster.

Only what is simulator-only lives here (the simulator, its events, node storage,
the timeline file); what the live runtime runs too (jobs, links, the batch
formers, the recorder, the metrics) is in :mod:`runtime.execution`.
"""

from runtime.sim.simulator import SimOptions, SimResult, SimulationStuck, Simulator
from runtime.sim.timeline import write_timeline

__all__ = ["SimOptions", "SimResult", "SimulationStuck", "Simulator", "write_timeline"]
