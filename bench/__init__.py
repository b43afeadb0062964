"""The benchmarks: `python -m bench {serve,engine,fidelity,gpu}` (bench/__main__.py); plumbing in bench/lib."""
