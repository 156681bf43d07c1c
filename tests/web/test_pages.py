"""The pages' files as the relay serves them (fake ASGI closures, no Redis reached)."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.node.app import App
from relay.web import pages
from tests.node.test_app import app, call

__all__ = ["app"]  # the fixture, shared with test_app


@pytest.mark.parametrize(("path", "kind", "marker"), [
    ("/", "text/html", b"EventSource"),
    ("/dashboard", "text/html", b"dashboard.js"),
    ("/static/demo.js", "text/javascript", b"new EventSource"),
    ("/static/dashboard.js", "text/javascript", b"ssedge.stats"),
    ("/static/style.css", "text/css", b"--accent"),
])
def test_pages_are_public_cacheable_with_etag(app: App, path: str, kind: str,
                                              marker: bytes) -> None:
    status, headers, body = call(app, "GET", path)
    assert status == 200 and headers["content-type"].startswith(kind)
    assert marker in body
    assert headers["cache-control"].startswith("public, max-age=")
    status, _, body = call(app, "GET", path, {"If-None-Match": headers["etag"]})
    assert status == 304 and body == b""


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/static/nope.js", 404),
    ("GET", "/static/../app.py", 404),
    ("GET", "/static/%2e%2e%2fapp.py", 404),
    ("GET", "/static", 404),
    ("GET", "/index.html", 404),
    ("POST", "/", 405),
    ("POST", "/dashboard", 405),
])
def test_only_the_pages_files_by_name(app: App, method: str, path: str, status: int) -> None:
    assert call(app, method, path)[0] == status


def test_pages_only_serve_known_types_of_their_own_directory(tmp_path: Path) -> None:
    (tmp_path / "a.html").write_text("<p>a")
    (tmp_path / "notes.txt").write_text("private")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.js").write_text("b")
    found = pages.Pages(tmp_path)
    assert set(found.files) == {"a.html"}
    assert found.find(["static", "a.html"]) is not None
    assert found.find(["static", "notes.txt"]) is None
    assert found.find(["static", "sub", "b.js"]) is None
    assert found.find([""]) is None  # no index.html here


def test_every_page_is_shipped_as_package_data() -> None:
    shipped = set(pages.Pages().files)
    assert {"index.html", "dashboard.html", "demo.js", "dashboard.js", "style.css"} <= shipped
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert '"relay.web" = ["static/*"]' in pyproject
