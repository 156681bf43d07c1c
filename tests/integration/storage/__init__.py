"""Integration tests: what is kept in Redis: the journal, a cluster, failover, a second region
(relay/storage/)."""
