"""relay/cli/load.py: the ``ssedge load`` command line, built without running Locust."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from loadtests.scenarios import SCENARIOS, tags_of
from relay.cli import load


def args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    load.add_arguments(p)
    return p.parse_args(list(argv))


def option(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


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


def test_a_shape_is_one_more_locustfile_and_connect_time_an_objective() -> None:
    cmd = load.command(args("fanout", "--shape", "step", "--max-connect-p99-ms", "250"))
    files = option(cmd, "-f").split(",")
    assert [Path(f).name for f in files] == ["locustfile.py", "shape_step.py"]
    assert all(Path(f).is_file() for f in files)
    assert option(cmd, "--ssedge-max-connect-p99-ms") == "250.0"
    assert option(load.command(args("fanout")), "-f").endswith("locustfile.py")


def _conf(name: str) -> dict[str, str]:
    path = Path(load.LOCUSTFILE).with_name(f"{name}.conf")
    pairs = (line.split("=", 1) for line in path.read_text().splitlines()
             if line.strip() and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_each_scenario_has_a_conf_that_selects_it_by_tag(name: str) -> None:
    conf = _conf(name)
    assert conf["tags"] == name and conf["ssedge-scenario"] == name
    assert conf["headless"] == "true" and conf["run-time"] and conf["ssedge-settle"]
    for knob, value in SCENARIOS[name].options.items():
        assert conf[f"ssedge-{knob}"] == value
    for user_class in SCENARIOS[name].user_classes:  # its classes carry its tag
        assert name in tags_of(user_class)


def test_tags_name_every_scenario_a_class_is_in() -> None:
    assert tags_of("FanoutReader") == ("fanout", "hostile")
    assert tags_of("HostileClient") == ("hostile",)
    assert set(tags_of("SteadyPublisher")) == {
        "fanout", "many-topics", "reconnect-storm", "slow-consumer", "churn", "private-topic",
        "hostile"}
    assert tags_of("NoSuchClass") == ()


def test_a_subscriber_token_is_minted_for_private_topics(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import jwt

    monkeypatch.delenv("SSEDGE_SUBSCRIBE_TOKEN", raising=False)
    monkeypatch.delenv("SSEDGE_JWT_SECRET", raising=False)
    with pytest.raises(ValueError, match="subscriber token"):
        load.subscribe_token(None, 60)
    assert load.subscribe_token("given", 60) == "given"
    secret = "x" * 32
    monkeypatch.setenv("SSEDGE_JWT_SECRET", secret)
    claims = jwt.decode(load.subscribe_token(None, 60), secret, algorithms=["HS256"])
    assert claims["ssedge"]["subscribe"] == ["private-*"]
    assert claims["exp"] - claims["iat"] == 3660
