"""The demo page and the dashboard: the files of ``relay/web/static/``, served by every relay.

They are public and the same for everyone, so they are read once at start-up and answered
with a strong ETag (304 on ``If-None-Match``) and a public lifetime that Varnish keeps: the
relays see about one request per file per minute whatever the audience. Plain HTML, CSS and
JavaScript with no build step; the pages talk to the ordinary API (EventSource on a topic,
publish with a bearer token), so they work through any edge that serves that API.
"""

from __future__ import annotations

from pathlib import Path

STATIC = Path(__file__).resolve().parent / "static"
# a page may change with a deploy: a minute in caches, then revalidated by ETag
MAX_AGE_S = 60
CACHE_CONTROL = f"public, max-age={MAX_AGE_S}, stale-while-revalidate=30, stale-if-error=3600"

# the paths that name a page (its file) besides /static/<file>
ROUTES = {"": "index.html", "dashboard": "dashboard.html"}
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}


class Page:
    __slots__ = ("body", "content_type")

    def __init__(self, body: bytes, content_type: str) -> None:
        self.body = body
        self.content_type = content_type


class Pages:
    """Every file of a directory (not its subdirectories), by name."""

    def __init__(self, directory: Path = STATIC) -> None:
        self.files: dict[str, Page] = {}
        if directory.is_dir():
            for path in sorted(directory.iterdir()):
                kind = TYPES.get(path.suffix)
                if path.is_file() and kind is not None:
                    self.files[path.name] = Page(path.read_bytes(), kind)

    def find(self, parts: list[str]) -> Page | None:
        """The page a request path names (split into its segments), or None."""
        path = "/".join(parts)
        name = ROUTES.get(path)
        if name is None and len(parts) == 2 and parts[0] == "static":
            name = parts[1]
        return self.files.get(name) if name is not None else None
