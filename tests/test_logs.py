"""Logs as text or one JSON object per line, and an access log that never writes a query
string (where a reader's token travels) nor a header."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from relay import logs
from relay.settings import load
from relay.web.http import Request, Responder, answer


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield io.StringIO()
    root.handlers[:] = handlers
    root.setLevel(level)


def use(stream: io.StringIO, fmt: str, level: str = "info") -> None:
    logs.setup(level, fmt)
    logging.getLogger().handlers[0].setStream(stream)  # type: ignore[attr-defined]


def test_json_lines_carry_level_logger_message_and_the_traceback(captured: io.StringIO) -> None:
    use(captured, "json")
    log = logging.getLogger("ssedge.test")
    log.debug("not at info")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed on %s", "x")
    lines = captured.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["level"] == "error" and record["logger"] == "ssedge.test"
    assert record["message"] == "failed on x" and "ValueError: boom" in record["exception"]
    assert record["time"].endswith("Z") and isinstance(record["pid"], int)


def test_the_level_setting_filters(captured: io.StringIO) -> None:
    use(captured, "text", "warning")
    logging.getLogger("ssedge.test").info("quiet")
    logging.getLogger("ssedge.test").warning("loud")
    assert "quiet" not in captured.getvalue() and "WARNING ssedge.test loud" in captured.getvalue()


def request(path: str, query: bytes, headers: dict[str, str]) -> Request:
    return Request({"type": "http", "method": "GET", "path": path,
                    "raw_path": path.encode(), "query_string": query,
                    "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
                    "client": ("203.0.113.7", 4242)})


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_the_access_log_writes_the_path_never_the_query_nor_a_header(
    captured: io.StringIO, fmt: str,
) -> None:
    use(captured, fmt)
    responder = Responder("*", {}, access_log=load({"SSEDGE_ACCESS_LOG": "true"}).access_log)
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def handler() -> None:
        await responder.json(send, 200, {"ok": True})

    secret = "eyJhbGciOiJIUzI1NiJ9.secret"
    req = request("/v1/streams/private-1/events", f"access_token={secret}".encode(),
                  {"authorization": f"Bearer {secret}", "cookie": f"ssedge_auth={secret}"})
    asyncio.run(answer(responder, req, send, handler()))
    text = captured.getvalue()
    assert secret not in text and "access_token" not in text and "?" not in text
    assert "/v1/streams/private-1/events" in text and "200" in text and "203.0.113.7" in text
    if fmt == "json":
        record = json.loads(text)
        assert record["status"] == 200 and record["method"] == "GET"
        assert record["path"] == "/v1/streams/private-1/events"


def test_no_access_log_unless_asked(captured: io.StringIO) -> None:
    use(captured, "text")
    responder = Responder("*", {})

    async def send(message: Any) -> None:
        pass

    asyncio.run(answer(responder, request("/healthz", b"", {}), send,
                       responder.json(send, 200, {})))
    assert captured.getvalue() == ""
