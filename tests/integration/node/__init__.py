"""Integration tests: a relay node's streams, publishes, feed and faults (relay/node/)."""
