"""Benchmarks on the local cluster. Each prints ratios measured in one run; none asserts a time."""
