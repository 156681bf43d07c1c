"""Integration tests: the edge: HAProxy in front, varnishd behind it (relay/edge/, varnish/)."""
