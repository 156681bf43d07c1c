"""The one table from the lower layers' words to HTTP answers (relay/web/errors.py), and that
``http.answer`` sends what it says."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from relay.storage import idempotency
from relay.web import errors
from relay.web.http import Request, Responder, answer


def test_storage_errors_get_their_answers() -> None:
    bad = errors.from_below(idempotency.BadKey("send one Idempotency-Key"))
    assert isinstance(bad, errors.BadRequest) and bad.message == "send one Idempotency-Key"
    conflict = errors.from_below(idempotency.KeyConflict("k"))
    assert isinstance(conflict, errors.Unprocessable) and conflict.status == 422
    assert conflict.message != "k" and "nothing was published" in conflict.message
    assert errors.from_below(RuntimeError("x")) is None
    assert errors.from_below(ValueError("x")) is None  # BadKey is one, not every ValueError


def test_answer_sends_the_tables_answer_not_a_500() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def handler() -> None:
        raise idempotency.KeyConflict("k")

    scope = {"type": "http", "method": "POST", "path": "/v1/streams/a/events",
             "query_string": b"", "headers": []}
    asyncio.run(answer(Responder("*", {}), Request(scope), send, handler()))
    assert sent[0]["status"] == 422
    assert json.loads(sent[-1]["body"])["error"] == "unprocessable"
