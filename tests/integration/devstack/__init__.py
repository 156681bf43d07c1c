"""Integration tests: ssedge up's stacks, supervised, and the wheel that carries them
(relay/devstack/)."""
