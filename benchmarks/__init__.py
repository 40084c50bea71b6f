"""Performance harness: each module prints a side-by-side table (nothing is asserted)."""
