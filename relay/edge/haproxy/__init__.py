"""HAProxy in front: streams and publishes to the relays, limits, TLS and HTTP/2."""
