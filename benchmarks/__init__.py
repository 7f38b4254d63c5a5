"""Timing scripts for dlnode against its peers (outside the library and its unit tests): `python -m benchmarks.run`."""
