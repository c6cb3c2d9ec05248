"""Benchmarks for snakebridge: `python -m bench` (or `make bench`).

Prints figures and writes them as JSON to bench/results/; it is not a test and asserts nothing.
"""
