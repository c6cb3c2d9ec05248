"""Preloaded by a pool in test_pools.py: importing it is what the test observes."""

LOADED = True
