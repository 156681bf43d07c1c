"""A realistic public feed to measure with: price ticks, as an exchange's public ticker sends.

The shape is the ``ticker`` message of Coinbase Exchange's public WebSocket feed (its
documented fields, in its order, prices and sizes as decimal strings, an ISO time with
microseconds): one message per trade, for the product traded. The churn is a real one's:
trades fall on a few products far more than on the rest (Zipf, s = 1.1, over ``products``),
each price moves by a random walk of a few ticks, best bid and ask straddle it, the 24 h
figures drift, sequence numbers and trade ids grow. What compresses is what compresses in the
real feed: repeated keys and product names, shared leading digits; sizes, sequence numbers
and times do not. About 400 bytes of JSON an event.

Deterministic for a seed; no I/O (benchmarks and Locust scenarios both use it).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime

import msgspec

_BASES = ("BTC", "ETH", "SOL", "XRP", "DOGE", "ADA", "AVAX", "LINK", "DOT", "LTC", "BCH",
          "UNI", "ATOM", "XLM", "ETC", "FIL", "APT", "ARB", "OP", "NEAR", "AAVE", "MKR",
          "SHIB", "ALGO", "ICP", "HBAR", "GRT", "SAND", "MANA", "CRV", "SNX", "COMP")
_QUOTES = ("USD", "EUR", "USDT", "GBP")


class Ticker(msgspec.Struct, frozen=True):
    type: str
    sequence: int
    product_id: str
    price: str
    open_24h: str
    volume_24h: str
    low_24h: str
    high_24h: str
    volume_30d: str
    best_bid: str
    best_bid_size: str
    best_ask: str
    best_ask_size: str
    side: str
    time: str
    trade_id: int
    last_size: str


_encode = msgspec.json.Encoder().encode


class _Product:
    __slots__ = ("high", "id", "low", "open", "price", "tick", "trade_id", "volume",
                 "volume_30d")

    def __init__(self, product_id: str, price: float, rng: random.Random) -> None:
        self.id = product_id
        self.price = price
        self.tick = 10 ** (len(str(int(price))) - 5) if price >= 1 else 0.0001
        self.open = price * rng.uniform(0.97, 1.03)
        self.low = min(price, self.open) * rng.uniform(0.97, 0.999)
        self.high = max(price, self.open) * rng.uniform(1.001, 1.03)
        self.volume = rng.uniform(1e3, 5e5)
        self.volume_30d = self.volume * rng.uniform(25, 35)
        self.trade_id = rng.randrange(10**7, 10**9)


class Feed:
    """Ticks of ``products`` products (up to 128), most trades on the first few."""

    def __init__(self, products: int = 32, seed: int = 1, start: float = 1.8e9) -> None:
        rng = self._rng = random.Random(seed)
        names = [f"{b}-{q}" for q in _QUOTES for b in _BASES][:max(1, min(products, 128))]
        self._products = [_Product(name, 10 ** rng.uniform(-1, 4.8), rng) for name in names]
        weights = [1 / (rank + 1) ** 1.1 for rank in range(len(names))]
        total = sum(weights)
        self._cumulative = []
        acc = 0.0
        for weight in weights:
            acc += weight / total
            self._cumulative.append(acc)
        self._sequence = rng.randrange(10**10, 10**11)
        self._now = start

    def _pick(self) -> _Product:
        x = self._rng.random()
        for i, bound in enumerate(self._cumulative):
            if x <= bound:
                return self._products[i]
        return self._products[-1]

    def next(self, dt: float = 0.1) -> Ticker:
        """The next tick, ``dt`` seconds after the last."""
        rng = self._rng
        p = self._pick()
        self._now += dt
        self._sequence += rng.randrange(1, 40)
        p.trade_id += rng.randrange(1, 12)
        p.price = max(p.tick, p.price + p.tick * round(rng.gauss(0, 3)))
        size = round(rng.expovariate(1 / 0.4) * (1000 / max(p.price, 1)) ** 0.5, 8)
        p.volume += size
        p.volume_30d += size
        p.low = min(p.low, p.price)
        p.high = max(p.high, p.price)
        spread = p.tick * rng.randrange(1, 6)
        digits = max(0, -int(f"{p.tick:e}".split("e")[1]))
        price = f"{p.price:.{digits}f}"
        return Ticker(
            type="ticker", sequence=self._sequence, product_id=p.id, price=price,
            open_24h=f"{p.open:.{digits}f}", volume_24h=f"{p.volume:.8f}",
            low_24h=f"{p.low:.{digits}f}", high_24h=f"{p.high:.{digits}f}",
            volume_30d=f"{p.volume_30d:.8f}",
            best_bid=f"{p.price - spread / 2:.{digits}f}",
            best_bid_size=f"{rng.expovariate(1 / 2):.8f}",
            best_ask=f"{p.price + spread / 2:.{digits}f}",
            best_ask_size=f"{rng.expovariate(1 / 2):.8f}",
            side=rng.choice(("buy", "sell")),
            time=datetime.fromtimestamp(self._now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            trade_id=p.trade_id, last_size=f"{size:.8f}")

    def json(self, dt: float = 0.1) -> bytes:
        """The next tick as the JSON a publisher sends (``data`` of an event)."""
        return _encode(self.next(dt))

    def __iter__(self) -> Iterator[bytes]:
        while True:
            yield self.json()
