"""The SSE protocol and the resume rules, without I/O: wire format, ids, ring, resume."""
