"""The producer role: scan a dataset, register the run in Redis, enqueue its jobs."""
