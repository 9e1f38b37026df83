"""The engine's HBM on a CUDA device (``device="cuda"``)."""

from __future__ import annotations

from runtime.live.transport.base import Region


class DeviceMemory:
    """The engine's HBM on a CUDA device: every arrived layer is copied host → GPU for real.

    The registered host buffer (where both paths land) is pinned, so the copies are
    DMA; checksums are then computed on what came back from the device, so a block
    counts as verified only if the right bytes reached GPU memory.
    """

    def __init__(self, region: Region) -> None:
        import torch  # only on CUDA hosts: the CPU runtime never needs it

        if not torch.cuda.is_available():
            raise RuntimeError("device='cuda' needs a CUDA GPU; torch sees none")
        self.torch = torch
        self.host = torch.frombuffer(region.view, dtype=torch.uint8)
        torch.cuda.cudart().cudaHostRegister(self.host.data_ptr(), region.size, 0)
        self.hbm = torch.empty(region.size, dtype=torch.uint8, device="cuda")
        self.stream = torch.cuda.Stream()

    def copy_in(self, ranges: list[tuple[int, int]]) -> int:
        """Copy ``(offset, length)`` ranges host → GPU; returns the bytes copied."""
        with self.torch.cuda.stream(self.stream):
            for at, n in ranges:
                self.hbm[at:at + n].copy_(self.host[at:at + n], non_blocking=True)
        self.stream.synchronize()
        return sum(n for _, n in ranges)

    def read(self, at: int, n: int) -> bytes:
        return bytes(self.hbm[at:at + n].cpu().numpy())
