"""Each command takes the settings it uses as flags, and no others; ``--version``; a mistake
on the command line is one line, exit 2."""

from __future__ import annotations

import contextlib
import io

import pytest

from relay import __version__
from relay.cli import flags, parser
from relay.settings import fields


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            parser().parse_args(list(argv))
        except SystemExit as exc:
            return int(exc.code or 0), out.getvalue(), err.getvalue()
    return 0, out.getvalue(), err.getvalue()


def test_every_setting_is_the_flag_of_some_command() -> None:
    taken = {name for command in flags.TAKES for name in flags.names(command)}
    assert taken == {name for name, _, _ in fields()}


def test_each_command_takes_its_own_settings_only() -> None:
    assert "port" in flags.names("relay") and "replay_port" not in flags.names("relay")
    assert "replay_port" in flags.names("replay") and "port" not in flags.names("replay")
    assert "ingest_lease_ms" in flags.names("ingest") and "max_streams" not in flags.names(
        "ingest")
    assert set(flags.names("stats")) == {"redis_url", "redis_cluster", "log_level",
                                         "log_format"}
    for command in flags.TAKES:  # every server says how it logs and where Redis is
        assert {"redis_url", "log_level", "log_format"} <= set(flags.names(command))


@pytest.mark.parametrize("argv", [
    ("replay", "--port", "1"),  # the replay service listens on --replay-port
    ("ingest", "--max-streams", "5"),
    ("stats", "--ring-events", "5"),
    ("relay", "--ingest-lease-ms", "5"),
])
def test_a_flag_the_command_would_ignore_is_refused_in_one_line(argv: tuple[str, ...]) -> None:
    code, _, err = run(*argv)
    assert code == 2 and len(err.strip().splitlines()) == 1 and argv[1] in err


def test_version() -> None:
    code, out, _ = run("--version")
    assert code == 0 and out.strip() == f"ssedge {__version__}"
