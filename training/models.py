"""training tables: dataset snapshots and training runs (built in a later issue)."""
