"""Benchmarks: `python -m benchmarks` (or `make bench`). Ratios are measured in one run on the same machine."""
