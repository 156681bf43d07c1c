"""Idempotency-Key parsing, the request digest and the key layout (no Redis reached)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.node.app import decode_events
from relay.storage import idempotency
from relay.storage import streams as store


def test_a_key_is_taken_as_sent() -> None:
    assert idempotency.parse_key([]) is None
    assert idempotency.parse_key([(b"content-type", b"x")]) is None
    key = b"8e03978e-40d5-43e8-bc93-6894a57f9324"
    assert idempotency.parse_key([(b"idempotency-key", key)]) == key.decode()
    # the IETF draft's quoted form is a key like any other (the quotes are part of it)
    assert idempotency.parse_key([(b"Idempotency-Key", b'"abc"')]) == '"abc"'
    assert idempotency.parse_key([(b"idempotency-key", b"a" * 255)]) == "a" * 255


@pytest.mark.parametrize("headers", [
    [(b"idempotency-key", b"")],
    [(b"idempotency-key", b"  ")],
    [(b"idempotency-key", b"a" * 256)],
    [(b"idempotency-key", "é".encode())],
    [(b"idempotency-key", b"\xe9")],
    [(b"idempotency-key", b"a\tb")],
    [(b"idempotency-key", b"a\x00b")],
    [(b"idempotency-key", b"a\x7fb")],
    [(b"idempotency-key", b"a"), (b"Idempotency-Key", b"b")],
])
def test_bad_keys_are_refused(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(idempotency.BadKey):
        idempotency.parse_key(headers)


def test_the_key_is_in_the_topic_slot_and_its_length_bounded() -> None:
    key = idempotency.redis_key("news", "x" * 255)
    assert key.startswith(store.stream_key("news") + ":idem:")  # same {hash tag}
    assert len(key) == len("ssedge:{news}:idem:") + 32
    assert idempotency.redis_key("news", "a") != idempotency.redis_key("other", "a")


def test_the_digest_is_the_request_as_stored() -> None:
    def digest(body: bytes, topic: str = "t") -> str:
        events, many = decode_events(body, 100)
        return idempotency.digest(topic, events, many)

    same = digest(b'{"data": "x", "event": "e"}')
    assert digest(b'{ "event":"e","data":"x" }') == same  # JSON spacing and key order
    assert digest(b'{"data": "x", "event": "e"}', topic="u") != same
    assert digest(b'[{"data": "x", "event": "e"}]') != same  # an array answers "ids"
    assert digest(b'{"data": "x"}') != same
    assert digest(b'{"data": "y", "event": "e"}') != same
    # data is compared as it goes on the wire: a JSON value as written, a string as its text
    assert digest(b'{"data": {"a":1}}') != digest(b'{"data": {"a": 1}}')
    assert digest(b'{"data": "1"}') == digest(b'{"data": 1}')


@given(st.lists(st.tuples(st.binary(max_size=8), st.none() | st.text(min_size=1, max_size=4)),
                min_size=1, max_size=4),
       st.lists(st.tuples(st.binary(max_size=8), st.none() | st.text(min_size=1, max_size=4)),
                min_size=1, max_size=4))
def test_different_events_never_share_a_digest(
    a: list[tuple[bytes, str | None]], b: list[tuple[bytes, str | None]]
) -> None:
    # length-prefixed fields: no data or type can be cut to look like another batch
    assert (idempotency.digest("t", a, True) == idempotency.digest("t", b, True)) == (a == b)
