"""The dynamics: the per-layer gradient flow, the modified flow, the end-to-end and infinite-depth flows, and the
problem's scales (time unit, escape estimates)."""
