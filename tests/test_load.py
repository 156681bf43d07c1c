"""relay/load.py: the ``ssedge load`` command line, built without running Locust."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from loadtests.scenarios import SCENARIOS
from relay import load


def args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    load.add_arguments(p)
    return p.parse_args(list(argv))


def option(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


@pytest.mark.parametrize(("span", "secs"), [("60", 60), ("60s", 60), ("2m", 120),
                                            ("1h30m", 5400), ("1.5s", 1.5)])
def test_durations(span: str, secs: float) -> None:
    assert load.seconds(span) == secs


@pytest.mark.parametrize("span", ["", "abc", "10x", "5m junk"])
def test_bad_durations(span: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        load.seconds(span)


def test_headless_command_for_a_scenario(tmp_path: Path) -> None:
    cmd = load.command(args("reconnect-storm", "--users", "300", "--duration", "2m",
                            "--settle", "10", "--results", str(tmp_path),
                            "--set", "storm-every=20", "--max-p99-ms", "800",
                            "--token", "secret"))
    assert cmd[-2:] == list(SCENARIOS["reconnect-storm"].user_classes)
    assert option(cmd, "-u") == "300" and option(cmd, "-t") == "2m"
    assert option(cmd, "--host") == "http://127.0.0.1:8080"
    assert option(cmd, "--ssedge-publish-for") == "110"
    assert option(cmd, "--ssedge-storm-every") == "20"  # --set wins over the scenario
    assert option(cmd, "--ssedge-storm-share") == "0.9"  # the scenario's own default
    assert option(cmd, "--ssedge-max-p99-ms") == "800.0"
    assert option(cmd, "--csv") == str(tmp_path / "reconnect-storm")
    assert option(cmd, "--html") == str(tmp_path / "reconnect-storm.html")
    assert "--headless" in cmd
    assert "secret" not in cmd  # the token goes through the environment


def test_distributed_and_web_commands() -> None:
    master = load.command(args("fanout", "--expect-workers", "4"))
    assert option(master, "--expect-workers") == "4" and "--master" in master
    worker = load.command(args("fanout", "--worker", "10.0.0.5"))
    assert worker[-3:] == ["--worker", "--master-host", "10.0.0.5"]
    web = load.command(args("fanout", "--web"))
    assert "--headless" not in web and "--ssedge-publish-for" not in web


def test_bad_knobs_and_settle() -> None:
    with pytest.raises(ValueError, match="KNOB=VALUE"):
        load.command(args("fanout", "--set", "rate"))
    with pytest.raises(ValueError, match="settle"):
        load.command(args("fanout", "--duration", "5s", "--settle", "5"))


def test_token_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SSEDGE_PUBLISH_TOKEN", raising=False)
    assert load.token(None) == ""
    (tmp_path / ".ssedge").mkdir()
    (tmp_path / ".ssedge" / "publish-token").write_text("from-file\n")
    assert load.token(None) == "from-file"
    monkeypatch.setenv("SSEDGE_PUBLISH_TOKEN", "from-env")
    assert load.token(None) == "from-env"
    assert load.token("flag") == "flag"
