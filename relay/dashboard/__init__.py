"""The operators' dashboard: the collector of every node's numbers and the stats."""
