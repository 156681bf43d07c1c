"""Integration tests: a real Chromium through the edge: EventSource as browsers run it."""
