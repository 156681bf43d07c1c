"""Integration tests: the command line and ssedge load (relay/cli/)."""
