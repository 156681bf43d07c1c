"""What ssedge ingest follows: --from, upstream names, the TOML file."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.ingest.config import Upstream, default_name, load_file, merge, parse_from, topic
from relay.settings import SettingsError


def test_from_with_and_without_a_name() -> None:
    assert parse_from("a=http://h:9/e?x=1") == Upstream("a", "http://h:9/e?x=1")
    # "=" inside the URL is not a name
    assert parse_from("http://h:9/e?x=1").name == "h:9/e"


@pytest.mark.parametrize(("url", "name"), [
    ("http://server-a:9000/prices/", "server-a:9000/prices"),
    ("https://user:secret@news.example/sse?token=abc", "news.example/sse"),
    ("http://h/a%20b", "h/a_20b"),
])
def test_default_name_never_holds_the_query_or_credentials(url: str, name: str) -> None:
    assert default_name(url) == name


@pytest.mark.parametrize("value", [
    "ftp://h/x", "h:9/x", "http:///nohost", "bad name=http://h/x", "a\nb=http://h/x",
])
def test_bad_from_is_one_line(value: str) -> None:
    with pytest.raises(SettingsError) as info:
        parse_from(value)
    assert "\n" not in str(info.value)


def test_topic_checks_name_and_duplicates() -> None:
    with pytest.raises(SettingsError, match="bad topic"):
        topic("no spaces", [parse_from("http://h/x")])
    with pytest.raises(SettingsError, match="twice"):
        topic("t", [parse_from("http://h/x"), parse_from("http://h/x")])
    with pytest.raises(SettingsError, match="no upstream"):
        topic("t", [])


def test_file_lists_topics_with_names_headers_and_envelope(tmp_path: Path) -> None:
    path = tmp_path / "ingest.toml"
    path.write_text('''
[[ingest]]
topic = "prices"
from = ["http://a:9000/prices", "b=http://b:9000/prices"]

[[ingest]]
topic = "news"
envelope = true

[[ingest.from]]
name = "wire"
url = "https://news.example/sse"
headers = { Authorization = "Bearer x" }
''')
    prices, news = load_file(path)
    assert prices.topic == "prices"
    assert [u.name for u in prices.upstreams] == ["a:9000/prices", "b"]
    assert news.envelope and news.upstreams[0] == Upstream(
        "wire", "https://news.example/sse", (("Authorization", "Bearer x"),))


@pytest.mark.parametrize("text", [
    "[[ingest]]\ntopic = 't'\n",  # no from
    "[[ingest]]\ntopic = 't'\nfrom = ['http://h/x']\ncolour = 'red'\n",  # unknown key
    "[[ingest]\n",  # not TOML
    '[[ingest]]\ntopic = "t"\nfrom = [{ url = "http://h/x", headers = { X = "a\\r\\nB: c" } }]\n',
])
def test_bad_file_is_one_line_naming_it(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SettingsError) as info:
        load_file(path)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read"):
        load_file(tmp_path / "nope.toml")


def test_merge_joins_a_topic_named_twice() -> None:
    merged = merge([topic("t", [parse_from("a=http://h/a")]),
                    topic("u", [parse_from("http://h/u")]),
                    topic("t", [parse_from("b=http://h/b")], envelope=True)])
    assert [(m.topic, [u.name for u in m.upstreams], m.envelope) for m in merged] == [
        ("t", ["a", "b"], True), ("u", ["h/u"], False)]
    with pytest.raises(SettingsError):
        merge([topic("t", [parse_from("a=http://h/a")]), topic("t", [parse_from("a=http://x/a")])])
