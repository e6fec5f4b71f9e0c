"""Benchmark scripts: ``python -m lckd_med.benchmarks.<name>`` (speed and memory targets are checked here, not in unit tests)."""
