"""One machine of the cluster: GPUs (one engine each), its storage NIC and compute NICs."""

from __future__ import annotations

from dataclasses import dataclass

from runtime.errors import require

GB = 1e9


@dataclass(frozen=True)
class NodeSpec:
    """Hardware of one node; prefill and decode nodes share it.

    Bandwidths are in GB/s (1e9 bytes per second) and sizes in GB, as in the
    preset files; the ``*_bytes*`` properties give bytes. Moving KV into HBM
    costs, besides bandwidth, one submission per block and layer (KV is paged
    per layer in HBM): ``h2d_copy_us`` per host-to-GPU copy and
    ``rdma_write_us`` per RDMA write.

    ``storage_efficiency`` is the share of the storage NIC's line rate that the storage
    service delivers (reads and write-backs): line rate is an upper bound that a
    distributed store reaches only with enough reads in flight on every target.
    ``snic_bytes_s`` is the delivered rate.

    KV-cache tiers beside storage (0 = none, as on the paper's testbed):
    ``dram_cache_gb`` of host DRAM per node keeps KV blocks (apart from the
    staging ``host_buffer_gb``), and ``hbm_cache_gb`` of HBM per prefill engine
    keeps a prefix cache (apart from the HBM its batches use, ``pe_hbm_kv_gb``).
    """

    gpus: int = 8
    snic_gb_s: float = 50.0
    storage_efficiency: float = 1.0
    cnic_gb_s: float = 50.0
    cnic_kv_share: float = 0.5
    pcie_gb_s: float = 50.0
    host_buffer_gb: float = 80.0
    pe_hbm_kv_gb: float = 30.0
    de_hbm_kv_gb: float = 30.0
    gpu_tflops: float = 1350.0
    h2d_copy_us: float = 6.0
    rdma_write_us: float = 1.0
    dram_cache_gb: float = 0.0
    hbm_cache_gb: float = 0.0

    def __post_init__(self) -> None:
        require(self.gpus > 0, "node.gpus", f"must be > 0 engines per node, got {self.gpus}")
        for key in ("snic_gb_s", "cnic_gb_s", "pcie_gb_s", "host_buffer_gb",
                    "pe_hbm_kv_gb", "de_hbm_kv_gb", "gpu_tflops"):
            value = getattr(self, key)
            require(value > 0, f"node.{key}", f"must be > 0, got {value}")
        for key in ("h2d_copy_us", "rdma_write_us", "dram_cache_gb", "hbm_cache_gb"):
            value = getattr(self, key)
            ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
            require(ok, f"node.{key}", f"must be a number >= 0, got {value!r}")
        require(0 < self.storage_efficiency <= 1, "node.storage_efficiency",
                f"must lie in (0, 1], got {self.storage_efficiency}")
        require(0 < self.cnic_kv_share <= 1, "node.cnic_kv_share",
                f"must lie in (0, 1], got {self.cnic_kv_share}")

    @property
    def snic_bytes_s(self) -> float:
        """What the storage service delivers through one node's SNIC, bytes/s."""
        return self.snic_gb_s * self.storage_efficiency * GB

    @property
    def cnic_kv_bytes_s(self) -> float:
        """CNIC bandwidth left to KV traffic (the low-priority lane)."""
        return self.cnic_gb_s * self.cnic_kv_share * GB

    @property
    def pcie_bytes_s(self) -> float:
        return self.pcie_gb_s * GB

    @property
    def host_buffer_bytes(self) -> float:
        return self.host_buffer_gb * GB

    @property
    def pe_hbm_kv_bytes(self) -> float:
        return self.pe_hbm_kv_gb * GB

    @property
    def de_hbm_kv_bytes(self) -> float:
        return self.de_hbm_kv_gb * GB

    @property
    def dram_cache_bytes(self) -> float:
        return self.dram_cache_gb * GB

    @property
    def hbm_cache_bytes(self) -> float:
        return self.hbm_cache_gb * GB

    @property
    def gpu_flops(self) -> float:
        return self.gpu_tflops * 1e12
