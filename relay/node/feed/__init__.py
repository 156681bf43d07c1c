"""The feed: one reader of every watched topic per process (one Redis, or a cluster)."""
