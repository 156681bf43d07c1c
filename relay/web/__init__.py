"""HTTP around the node: ASGI helpers, errors, CORS, tokens and keys, pages, a client."""
