"""KV-cache tiers: prefix caches in host DRAM (per node) and HBM (per prefill engine)."""

from runtime.cache.prefix import AGENT_CHAIN, prefix_hashes
from runtime.cache.prefix_cache import PrefixCache
from runtime.cache.tiers import CacheTiers, hash_block_tokens

__all__ = ["AGENT_CHAIN", "CacheTiers", "PrefixCache", "hash_block_tokens", "prefix_hashes"]
