"""One ``/metrics`` answer for all of a server's Granian workers.

Granian's workers are processes that share one listening socket, so a scrape reaches one of
them, whichever accepts first: with two workers, half the numbers were missing from every
scrape, at random. Each worker therefore also answers on a Unix socket of its own, and the
worker a scrape reaches asks every sibling there and merges the answers
(``relay.prometheus.merge``): one target per node for Prometheus, and every worker's numbers
in every scrape, each labelled with its ``worker`` slot.

The sockets are in Linux's abstract namespace, named after the server (``relay.node.server``
gives its workers a name of its own) and the slot, 0 to workers - 1. Binding a name claims
the slot and the kernel frees it when the process dies, however it dies: a worker Granian
respawns takes over the dead one's slot, so its series go on under the same label, and
nothing is left on disk when a server is killed.

A sibling that does not answer within ``SIBLING_TIMEOUT_S`` (starting, frozen, dying) is left
out of that scrape and counted in ``ssedge_metrics_workers_missing``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import time
from collections.abc import Callable

from relay import prometheus
from relay.prometheus import ProcessMetrics

log = logging.getLogger("ssedge.scrape")

#: the environment variables that name the server and count its workers (set by
#: ``relay.node.server`` for its workers; not settings: nobody else sets them)
NAME_ENV = "SSEDGE_INTERNAL_WORKERS_NAME"
COUNT_ENV = "SSEDGE_INTERNAL_WORKERS"
SIBLING_TIMEOUT_S = 1.0
CLAIM_TIMEOUT_S = 10.0


class Workers:
    """This worker's place among its server's: its slot, its socket, and the gathering."""

    def __init__(self, metrics: ProcessMetrics) -> None:
        self.metrics = metrics
        self.name = os.environ.get(NAME_ENV, "")
        self.count = max(1, int(os.environ.get(COUNT_ENV, "1") or 1))
        self.slot = 0
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Claim a slot and answer siblings on its socket (alone, outside a server: slot 0,
        nothing to gather)."""
        if not self.name:
            return
        self.slot, sock = _claim(self.name, self.count)
        self.metrics.worker = str(self.slot)
        self._server = await asyncio.start_unix_server(self._answer, sock=sock)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(self.metrics.render())
            await writer.drain()
        except OSError:
            pass  # the asking worker gave up on us
        finally:
            writer.close()

    async def gather(self, render: Callable[[], bytes] | None = None) -> bytes:
        """This worker's exposition merged with every sibling's that answers in time."""
        own = (render or self.metrics.render)()
        if not self.name or self.count == 1:
            return prometheus.merge([own, _missing(0, self.metrics)])
        others = [s for s in range(self.count) if s != self.slot]
        answers = await asyncio.gather(*(self._ask(s) for s in others))
        texts = [own, *(a for a in answers if a is not None)]
        texts.append(_missing(sum(a is None for a in answers), self.metrics))
        return prometheus.merge(texts)

    async def _ask(self, slot: int) -> bytes | None:
        async def read() -> bytes:
            # connected here, not by open_unix_connection: uvloop's refuses abstract names
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await asyncio.get_running_loop().sock_connect(sock, _address(self.name, slot))
            except BaseException:
                sock.close()
                raise
            reader, writer = await asyncio.open_unix_connection(sock=sock)
            try:
                return await reader.read(-1)
            finally:
                writer.close()

        try:
            return await asyncio.wait_for(read(), SIBLING_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            log.debug("worker %d did not answer for /metrics: %s", slot, exc)
            return None


def _address(name: str, slot: int) -> str:
    return f"\0{name}-worker-{slot}"  # a leading NUL: Linux's abstract namespace


def _missing(n: int, metrics: ProcessMetrics) -> bytes:
    out = prometheus.Exposition(metrics.node, worker=metrics.worker)
    out.gauge("metrics_workers_missing",
              "Workers of this server whose numbers this scrape lacks (starting, frozen, dead).",
              n)
    return out.text()


def _claim(name: str, count: int) -> tuple[int, socket.socket]:
    """The first free slot's number and its bound socket (held for the process's life)."""
    deadline = time.monotonic() + CLAIM_TIMEOUT_S
    while True:
        # past the deadline, a slot beyond the count: served, never gathered (and said so)
        late = time.monotonic() > deadline
        for slot in range(count, count + 64) if late else range(count):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(_address(name, slot))
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    continue
                raise
            if late:
                log.warning("every worker slot of %d was held; this worker's numbers are in "
                            "its own scrapes only (slot %d)", count, slot)
            return slot, sock
        if late:
            raise RuntimeError(f"no free worker slot for {name}")
        # every slot held: a dead worker's socket is freed as its process ends, which may be
        # a moment after Granian started its replacement
        time.sleep(0.05)
