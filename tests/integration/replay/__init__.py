"""Integration tests: the replay service (replay/)."""
