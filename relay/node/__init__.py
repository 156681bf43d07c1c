"""A relay node: the ASGI app, streams, fan-out, topics, the feed, process state."""
