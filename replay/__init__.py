"""ssedge replay service: closed ranges of a topic's Redis Stream as cacheable event streams."""
