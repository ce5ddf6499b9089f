"""Test harnesses that raysel's tests and its benchmarks both use (benchmarks may not import ``tests``).

* :mod:`raysel.testing.fake_cluster` — a token-authenticated fake multi-node autoscaling Ray cluster on one machine
  (Ray's fake multi-node provider), a sampler of its node count over time, and the sweep CLI run against it.

Nothing else in raysel imports this package (the layers contract in pyproject.toml puts it on top).
"""

__all__ = ["fake_cluster"]
