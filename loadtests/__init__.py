"""Locust scenarios for ssedge: SSE users, publishers and the loss and latency bookkeeping.

``tally`` and ``scenarios`` are plain Python (no gevent) so ``ssedge load`` and the unit tests
can import them; ``sse`` and ``locustfile`` import Locust, which monkey-patches the process.
"""
