"""Process-wide settings: JAX's persistent compilation cache, XLA's CPU threads, the Ctrl-C flag."""
