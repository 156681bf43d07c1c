"""ssedge relay: Server-Sent Events from Redis Streams through a shared ring buffer."""

__version__ = "0.1.0"
