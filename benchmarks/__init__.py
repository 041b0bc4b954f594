"""Benchmarks (``python -m benchmarks <what>``): figures and ratios against the reference
implementations in one run. Development tools: they need the test extra and print by design.
"""
