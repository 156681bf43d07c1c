"""relay/protocol/ticker.py: a price feed shaped like an exchange's public ticker."""

from __future__ import annotations

import json
import zlib

from relay.protocol.ticker import Feed

FIELDS = ["type", "sequence", "product_id", "price", "open_24h", "volume_24h", "low_24h",
          "high_24h", "volume_30d", "best_bid", "best_bid_size", "best_ask", "best_ask_size",
          "side", "time", "trade_id", "last_size"]


def test_ticks_have_the_ticker_shape_and_churn() -> None:
    feed = Feed(seed=3)
    ticks = [json.loads(feed.json()) for _ in range(2000)]
    assert all(list(t) == FIELDS and t["type"] == "ticker" for t in ticks)
    assert all(float(t["best_bid"]) <= float(t["price"]) <= float(t["best_ask"]) for t in ticks)
    assert all(float(t["low_24h"]) <= float(t["price"]) <= float(t["high_24h"]) for t in ticks)
    sequences = [t["sequence"] for t in ticks]
    assert sequences == sorted(set(sequences))
    products = [t["product_id"] for t in ticks]
    busiest = max(set(products), key=products.count)
    assert products.count(busiest) > len(ticks) / 10  # a few products take most trades
    assert len(set(products)) > 20
    assert all(t["time"].endswith("Z") for t in ticks)


def test_deterministic_and_about_four_hundred_bytes_that_compress_like_a_real_feed() -> None:
    a, b = Feed(seed=9), Feed(seed=9)
    events = [a.json() for _ in range(1000)]
    assert events == [b.json() for _ in range(1000)]
    size = sum(map(len, events)) / len(events)
    assert 330 < size < 470
    whole = b"".join(events)
    assert 3 < len(whole) / len(zlib.compress(whole, 6)) < 10
