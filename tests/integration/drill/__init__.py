"""Integration tests: ssedge drill against real processes (relay/drill/)."""
