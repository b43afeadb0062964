"""Benchmark harness: baseline vs the Serve app (bench.run) and engine levers (bench.levers)."""
