"""ssedge ingest: following upstream SSE servers into topics, exactly once."""
