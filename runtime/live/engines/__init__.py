"""The live engines: a prefill engine and a decode engine that move real KV bytes.

Both reuse the batch formers of :mod:`runtime.execution` (the prefill engine's,
the decode engine's continuous batch), as the simulator does, so the two
executions make the same choices; what differs is that here every transfer moves
real bytes through a transport or from storage, and every duration is waited for
on the clock.

Layout of a request's KV in a prefill engine's registered buffer: hit blocks
layer-major (``[layer][block]``, each slice ``block_bytes / layers``) so that one
layer of the DE-path blocks arrives as one contiguous write, then the appended
tokens' KV. In each layer row the blocks come in the prompt's order, which is
also their sources' order: those caches serve (this engine's HBM, its node's DRAM,
a peer's DRAM), then the prefill side's storage reads, then the decode side's.

Modules: :mod:`.prefill` (:class:`LivePrefill`), :mod:`.decode` (:class:`LiveDecode`),
:mod:`.job` (:class:`LiveJob`), :mod:`.cached` (cached blocks on the data path),
:mod:`.push` (host-held blocks written into a prefill engine layer by layer),
:mod:`.staging` (:class:`Staging`), :mod:`.device` (:class:`DeviceMemory`) and
:mod:`.host` (:class:`NodeServices`, what they use of their node).
"""

from runtime.live.blocks import write_blocks
from runtime.live.engines.decode import LiveDecode
from runtime.live.engines.device import DeviceMemory
from runtime.live.engines.host import NodeServices
from runtime.live.engines.job import LiveJob
from runtime.live.engines.prefill import LivePrefill

__all__ = ["DeviceMemory", "LiveDecode", "LiveJob", "LivePrefill", "NodeServices", "write_blocks"]
