"""The client side's settings, read in one place (relay/web/client_settings.py): a flag wins,
then the variable, then the local stack's files."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.web import client_settings


def test_token_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SSEDGE_PUBLISH_TOKEN", raising=False)
    assert client_settings.publish_token(None) == ""
    (tmp_path / ".ssedge").mkdir()
    (tmp_path / ".ssedge" / "publish-token").write_text("from-file\n")
    assert client_settings.publish_token(None) == "from-file"
    monkeypatch.setenv("SSEDGE_PUBLISH_TOKEN", "from-env")
    assert client_settings.publish_token(None) == "from-env"
    assert client_settings.publish_token("flag") == "flag"
    # ssedge publish takes no token file: a publish without a token is the caller's choice
    monkeypatch.delenv("SSEDGE_PUBLISH_TOKEN")
    assert client_settings.publish_token(None, stack=False) == ""


def test_url_and_ca_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SSEDGE_URL", raising=False)
    monkeypatch.delenv("SSEDGE_CA_FILE", raising=False)
    assert client_settings.base_url() == client_settings.DEFAULT_URL
    monkeypatch.setenv("SSEDGE_URL", "https://edge.example/")
    assert client_settings.base_url() == "https://edge.example"
    assert client_settings.base_url("http://x:1/") == "http://x:1"
    assert client_settings.ca_file(None, "https://127.0.0.1:8443") is None  # no stack CA here
    (tmp_path / ".ssedge" / "tls").mkdir(parents=True)
    (tmp_path / ".ssedge" / "tls" / "ca.pem").write_text("-")
    assert client_settings.ca_file(None, "https://127.0.0.1:8443") == ".ssedge/tls/ca.pem"
    assert client_settings.ca_file(None, "https://edge.example") is None
    assert client_settings.ca_file() is None  # the HTTP client's own: the variable only
    monkeypatch.setenv("SSEDGE_CA_FILE", "/ca.pem")
    assert client_settings.ca_file() == "/ca.pem"
    assert client_settings.ca_file("/flag.pem", "https://127.0.0.1") == "/flag.pem"
