"""Locust scenarios for ssedge: SSE users, publishers and the loss and latency bookkeeping.

``tally``, ``scenarios`` and ``report`` are plain Python (no gevent) so ``ssedge load``,
``ssedge drill`` and the unit tests can import them; ``sse``, ``locustfile`` and the load
shapes (``shapes``, ``shape_*``) import Locust, which monkey-patches the process.
"""
