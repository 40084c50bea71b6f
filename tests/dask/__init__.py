"""Tests of the dask backend against real scheduler and worker processes."""
