"""Benchmarks (`make bench`): heavy measurements kept out of the timed test suite."""
