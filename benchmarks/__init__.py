"""Benchmark scripts: `python -m benchmarks.<name>`; each writes its own section of BENCHMARKS.md."""
