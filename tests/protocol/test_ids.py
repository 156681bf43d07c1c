from __future__ import annotations

import pytest

from relay.protocol import ids


def test_parse_orders_like_redis() -> None:
    assert ids.parse("1-0") < ids.parse("1-1") < ids.parse("2-0")
    assert ids.parse("10-0") > ids.parse("9-99")
    assert ids.format(ids.parse("1732147200000-7")) == "1732147200000-7"
    assert ids.from_redis(b"5-3") == ids.parse("5-3")


@pytest.mark.parametrize("bad", ["", "1", "1-", "-1", "a-1", "1-1-1", " 1-1", "1-1 ",
                                 "18446744073709551616-0", "+1-0", "1.0-0"])
def test_parse_refuses(bad: str) -> None:
    with pytest.raises(ValueError):
        ids.parse(bad)


def test_predecessor() -> None:
    assert ids.predecessor(ids.parse("5-3")) == ids.parse("5-2")
    assert ids.predecessor(ids.parse("5-0")) == ids.parse("4-18446744073709551615")
