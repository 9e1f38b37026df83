"""The discrete-event simulator (virtual time) of the dual-path cluster."""

from runtime.sim.simulator import SimOptions, SimResult, SimulationStuck, Simulator
from runtime.sim.timeline import write_timeline

__all__ = ["SimOptions", "SimResult", "SimulationStuck", "Simulator", "write_timeline"]
