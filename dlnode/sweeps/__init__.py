"""Grids of calls: the config, the zarr store, and their execution on Dask."""
