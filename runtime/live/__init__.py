"""The live runtime: the dual-path cluster as real processes moving real KV bytes."""
