"""Integration tests: tokens, JWKS, token renewal, the pages (relay/web/)."""
