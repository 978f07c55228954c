"""The benchmark harness: `python -m benchmarks.run --scale 1m` (see benchmarks/README.md)."""
