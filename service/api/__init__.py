"""The HTTP layer: routers that translate between HTTP and the data plane, and nothing else."""
