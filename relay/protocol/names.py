"""Topic names and event types: the one rule for each, used by every part that meets them.

A topic is 1 to 128 characters of ``A-Z a-z 0-9 . _ : -``: safe in a URL path segment, a
Redis key (``ssedge:{topic}``) and a Prometheus label. An event type is 1 to 64 characters,
and like every SSE field value it holds no CR, LF or NUL: any of them would end the line and
let the value start a field or an event of its own.
"""

from __future__ import annotations

import re

TOPIC_CHARS = r"A-Za-z0-9._:\-"
MAX_TOPIC = 128
TOPIC = re.compile(rf"[{TOPIC_CHARS}]{{1,{MAX_TOPIC}}}")
TOPIC_RULE = f"a topic is 1 to {MAX_TOPIC} characters of A-Z a-z 0-9 . _ : -"
# a topic pattern (SSEDGE_PRIVATE_TOPICS, token rights): topic characters and ``*``
TOPIC_PATTERN = rf"[{TOPIC_CHARS}*]{{1,{MAX_TOPIC}}}"

MAX_EVENT_TYPE = 64
# what msgspec checks a published event type against (with the length bounds). Python's `$`
# also matches before a final \n: "tick\n" passed it and was dropped at delivery; the
# lookahead refuses that (and is read the same way by JSON Schema's ECMA-262 regexes)
EVENT_TYPE_PATTERN = r"^[^\r\n\x00]+$(?!\n)"
_BREAKS_A_FIELD = re.compile(rb"[\r\n\x00]")


def is_topic(name: str) -> bool:
    return TOPIC.fullmatch(name) is not None


def field_value_ok(value: bytes) -> bool:
    """Whether ``value`` can stand in an SSE field line (``id:``, ``event:``, …) as it is."""
    return _BREAKS_A_FIELD.search(value) is None


def event_type_ok(event: str) -> bool:
    """Whether ``event`` is a type publishing accepts."""
    return 0 < len(event) <= MAX_EVENT_TYPE and field_value_ok(event.encode())
