"""varnishd behind HAProxy: the protocol cache (handshake, metadata, replay pages)."""
