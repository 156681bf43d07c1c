"""The ingest process's metrics page."""

from __future__ import annotations

from relay.ingest.status import Status, render


def test_metrics_say_which_upstream_is_down_and_since_when() -> None:
    down = Status("t", "a", active=True, down_since=1_800_000_000.5, reconnects=3)
    down.error("connect")
    down.error("connect")
    standby = Status("t", "b", down_since=1_700_000_000.0)
    text = render("n1", [down, standby]).decode()
    lines = [line for line in text.splitlines() if not line.startswith("#")]

    def value(name: str, upstream: str, extra: str = "") -> str:
        prefix = f'ssedge_ingest_{name}{{node="n1",'
        for line in lines:
            if line.startswith(prefix) and f'upstream="{upstream}"{extra}}}' in line:
                return line.rsplit(" ", 1)[1]
        raise AssertionError(f"no {name} for {upstream}")

    assert value("active", "a") == "1" and value("up", "a") == "0"
    assert value("down_since_timestamp_seconds", "a") == "1800000000.5"  # not rounded to 1.8e+09
    assert value("down_since_timestamp_seconds", "b") == "0"  # standing by is not down
    assert value("errors_total", "a", ',kind="connect"') == "2"
    assert value("reconnects_total", "a") == "3"
    assert "# TYPE ssedge_ingest_events_total counter" in text
