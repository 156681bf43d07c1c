"""Integration tests: ssedge ingest against real upstreams (relay/ingest/)."""
