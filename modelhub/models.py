"""modelhub tables: the model registry and generation jobs (built in a later issue)."""
