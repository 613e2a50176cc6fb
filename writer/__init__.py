"""The writer role: finalize data shards once all their jobs are done, then commit the run."""
