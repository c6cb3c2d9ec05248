"""Preloaded by a pool in test_pools.py: its import fails, so the workers cannot start."""

raise RuntimeError("preload_fails refuses to import")
