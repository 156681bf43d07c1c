"""Would zstd pay for shared compression? The ticker feed's frames compressed by one
compressor with a flush per wake-up (as ``relay.protocol.deflate.Shared`` does): raw deflate
at level 6 next to zstd at levels 3, 6 and 9, with 1 and 10 events per wake-up. zstd comes
from the ``zstandard`` package, which is not a dependency: run it in a scratch venv with
``pip install zstandard msgspec``::

    python bench/zstd_ratio.py
"""

from __future__ import annotations

import sys
import time
import zlib
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from relay.protocol.ticker import Feed


def main() -> None:
    import zstandard  # type: ignore[import-not-found]

    feed = Feed(seed=7)
    events = [b"id: 1700000000000-%d\ndata: %s\n\n" % (i, msgspec.json.encode(feed.next()))
              for i in range(2000)]
    plain = sum(map(len, events))
    for per in (1, 10):
        batches = [b"".join(events[i:i + per]) for i in range(0, len(events), per)]
        z = zlib.compressobj(6, zlib.DEFLATED, -15)
        began = time.perf_counter()
        out = sum(len(z.compress(b) + z.flush(zlib.Z_SYNC_FLUSH)) for b in batches)
        took = time.perf_counter() - began
        print(f"deflate-6 {per} per wake-up: {plain / out:.2f}x, "
              f"{1e6 * took / len(batches):.1f} us a wake-up")
        for level in (3, 6, 9):
            c = zstandard.ZstdCompressor(level=level).compressobj()
            began = time.perf_counter()
            out = sum(len(c.compress(b) + c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
                      for b in batches)
            took = time.perf_counter() - began
            print(f"zstd-{level} {per} per wake-up: {plain / out:.2f}x, "
                  f"{1e6 * took / len(batches):.1f} us a wake-up")


if __name__ == "__main__":
    main()
