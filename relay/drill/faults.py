"""``ssedge drill``'s faults: their kinds, the schedule, and two ways to inject them.

- On the local stack (``ssedge up``), each fault acts on the stack's own processes, found in
  its ``supervisor.json``: signals to a child's process group, ``ss -K`` for connections.
  The supervisor restarts what exits; the drill notes when the target answers again.
- Against a deployment, each fault is a command the SRE gives (``--hook KIND=COMMAND``, run
  by ``sh -c``), so a drill works with systemd, Kubernetes or anything else; its exit status
  is part of the report, and a hook that fails fails the drill (the fault did not happen).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import re
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from relay.drill import hostile
from relay.stackstatus import read_status

#: every kind of fault, with what it does on the local stack; in this order, ``--every`` puts
#: other faults between two on relays (a relay back from one is healthy at the edge by then)
KINDS: dict[str, str] = {
    "relay-kill": "SIGKILL to a relay node (its whole process group), in turn",
    "replay-kill": "SIGKILL to the replay service",
    "relay-term": "SIGTERM to a relay node: it drains its streams and stops",
    "edge-restart": "SIGTERM to the edge's HAProxy (every stream through it drops), started "
                    "again by the supervisor",
    "varnish-restart": "SIGTERM to varnishd (the edge), started again by the supervisor",
    "relay-freeze": "SIGSTOP to a relay node, SIGCONT after --freeze",
    "redis-restart": "SIGTERM to Redis (it writes its AOF and stops), started again",
    "cut-connections": "ss -K: every connection to and from the edge's port is destroyed",
    "redis-kill": "SIGKILL to Redis, started again on what its disk holds",
    "hostile": "one source (127.0.0.2) abuses the edge for --freeze: streams on random "
               "topics, random replay pages, odd spellings, /metrics in absolute form",
}
_AT = re.compile(r"^([a-z-]+)@(.+)$")


class FaultError(ValueError):
    """A fault or a schedule that cannot be used; the message says which."""


@dataclass(frozen=True, slots=True)
class Planned:
    kind: str
    at: float  # seconds after the drill began


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise FaultError(f"unknown fault {kind!r} (known: {', '.join(KINDS)})")
    return kind


def parse_at(spec: str, seconds: Callable[[str], float]) -> Planned:
    """``relay-kill@5s`` as a planned fault."""
    m = _AT.match(spec.strip())
    if m is None:
        raise FaultError(f"--fault wants KIND@TIME (like relay-kill@5s), not {spec!r}")
    try:
        at = seconds(m.group(2))
    except ValueError as exc:
        raise FaultError(f"--fault {spec}: {exc}") from None
    return Planned(check_kind(m.group(1)), at)


def schedule(explicit: Sequence[Planned], every: float | None, kinds: Sequence[str],
             duration: float, rng: random.Random | None = None) -> list[Planned]:
    """The faults in time order: the explicit ones, and with ``every`` one each ``every``
    seconds until ``duration`` (minus ``every``, so the last has a window of its own), taking
    ``kinds`` in turn, or at random when ``rng`` is given (a soak)."""
    planned = list(explicit)
    if every:
        turn = itertools.cycle(kinds)
        t = every
        while t <= duration - every + 1e-9:
            planned.append(Planned(rng.choice(list(kinds)) if rng else next(turn), t))
            t += every
    return sorted(planned, key=lambda p: p.at)


@dataclass
class Injected:
    """What a fault did: its target and how, and (when it can be known) the seconds until the
    target answered again."""

    target: str
    detail: str
    back: Awaitable[float | None] | None = None
    error: str | None = None


class Injector(Protocol):
    """Injects faults by kind; ``close`` undoes what must not outlive the drill (a freeze)."""

    def can(self, kind: str) -> bool: ...

    async def inject(self, kind: str) -> Injected: ...

    async def close(self) -> None: ...


#### Against a deployment: hooks ##############################################################

class Hooks:
    """Each fault is the SRE's command (``sh -c``); the drill goes on while it runs."""

    def __init__(self, hooks: dict[str, str]) -> None:
        self.hooks = hooks
        self._running: list[asyncio.subprocess.Process] = []

    def can(self, kind: str) -> bool:
        return kind in self.hooks

    async def inject(self, kind: str) -> Injected:
        command = self.hooks[kind]
        started = time.monotonic()
        try:
            process = await asyncio.create_subprocess_shell(
                command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        except OSError as exc:
            return Injected("hook", command, error=f"hook could not run: {exc}")
        self._running.append(process)
        injected = Injected("hook", command)

        async def done() -> float | None:
            out, _ = await process.communicate()
            if process.returncode:
                tail = out.decode(errors="replace").strip().splitlines()[-1:] or [""]
                injected.error = f"hook exited {process.returncode}: {tail[0][:200]}"
            return time.monotonic() - started

        injected.back = done()
        return injected

    async def close(self) -> None:
        for process in self._running:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()


#### On the local stack ########################################################################

@dataclass(frozen=True, slots=True)
class Child:
    """A child of ``ssedge up`` as its ``supervisor.json`` says."""

    pid: int | None
    state: str
    restarts: int


@dataclass
class LocalStack:
    """The processes of a running ``ssedge up`` (its ``supervisor.json``), the edge's port."""

    directory: Path
    edge_port: int
    freeze_s: float = 5.0
    _relays: itertools.cycle[str] | None = None
    _frozen: set[int] = field(default_factory=set)

    @classmethod
    def find(cls, directory: Path, edge_port: int, freeze_s: float) -> LocalStack | None:
        """The stack in ``directory`` if one is running there with its edge on ``edge_port``
        (a drill through another URL must not hurt a stack that happens to run here)."""
        status = read_status(directory / "supervisor.json")
        if status is None or status.get("state") != "running":
            return None
        # the edge on that port: HAProxy ("edge"), or varnishd in a stack from before it
        if not any(isinstance(c, dict) and c.get("name") in ("edge", "varnish")
                   and c.get("port") == edge_port for c in status.get("children", [])):
            return None
        with contextlib.suppress(OSError):
            os.kill(int(status["pid"]), 0)
            return cls(directory, edge_port, freeze_s)
        return None

    def children(self) -> dict[str, Child]:
        status = read_status(self.directory / "supervisor.json") or {}
        out = {}
        for c in status.get("children", []):
            if isinstance(c, dict) and isinstance(c.get("name"), str):
                pid = c.get("pid")
                out[c["name"]] = Child(pid if isinstance(pid, int) else None,
                                       str(c.get("state")), int(c.get("restarts") or 0))
        return out

    def can(self, kind: str) -> bool:
        return kind in KINDS

    def _next_relay(self) -> str:
        if self._relays is None:
            names = sorted(n for n in self.children() if n.startswith("relay-"))
            if not names:
                raise FaultError("the stack has no relay")
            self._relays = itertools.cycle(names)
        return next(self._relays)

    async def inject(self, kind: str) -> Injected:
        if kind == "cut-connections":
            return await self._cut()
        if kind == "hostile":
            return self._hostile()
        name = {"replay-kill": "replay", "varnish-restart": "varnish", "redis-restart": "redis",
                "redis-kill": "redis", "edge-restart": "edge"}.get(kind) or self._next_relay()
        child = self.children().get(name)
        if child is None or child.pid is None:
            return Injected(name, "", error=f"no {name} in the stack")
        pid, restarts = child.pid, child.restarts
        sig = {"relay-kill": signal.SIGKILL, "replay-kill": signal.SIGKILL,
               "redis-kill": signal.SIGKILL, "relay-freeze": signal.SIGSTOP}.get(
                   kind, signal.SIGTERM)
        started = time.monotonic()
        try:
            # a child's group: a relay's workers go with it (ssedge up starts each child in
            # its own session); SIGTERM to the leader alone, as a service manager's stop does
            if sig == signal.SIGTERM:
                os.kill(pid, sig)
            else:
                os.killpg(pid, sig)
        except ProcessLookupError:
            return Injected(name, "", error=f"{name} (pid {pid}) is not running")
        detail = f"{sig.name} pid {pid}"
        if sig == signal.SIGSTOP:
            self._frozen.add(pid)
            return Injected(name, f"{detail}, SIGCONT after {self.freeze_s:g} s",
                            self._thaw_later(pid, started))
        return Injected(name, detail, self._back(name, restarts, started))

    async def _thaw_later(self, pid: int, started: float) -> float:
        await asyncio.sleep(self.freeze_s)
        self._thaw(pid)
        return time.monotonic() - started

    def _thaw(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGCONT)
        self._frozen.discard(pid)

    async def _back(self, name: str, restarts: int, started: float,
                    timeout: float = 60) -> float | None:
        """Seconds until the supervisor has the child up again after one more restart."""
        while time.monotonic() - started < timeout:
            child = self.children().get(name)
            if child is not None and child.state == "up" and child.restarts > restarts:
                return time.monotonic() - started
            await asyncio.sleep(0.05)
        return None

    async def _cut(self) -> Injected:
        port = self.edge_port
        argv = ["ss", "-K", "-t", "-n", "(", "dport", "=", f":{port}", "or", "sport", "=",
                f":{port}", ")"]
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await process.communicate()
        except OSError as exc:
            return Injected("edge", "ss -K", error=f"ss: {exc}")
        if process.returncode:
            return Injected("edge", "ss -K", error=f"ss -K failed: {err.decode().strip()[:200]}")
        # ss prints a header and one line per socket it destroyed (both ends of each)
        sockets = max(0, len(out.decode().strip().splitlines()) - 1)
        return Injected("edge", f"ss -K: {sockets} sockets on :{port} destroyed")

    def _hostile(self) -> Injected:
        """The abuse runs beside the drill's clients for ``freeze_s``; it is back when it
        ends. An operator endpoint that answered it fails the fault."""
        injected = Injected("edge", f"{hostile.HOSTILE} abuses :{self.edge_port} for "
                                    f"{self.freeze_s:g} s")
        started = time.monotonic()

        async def run() -> float:
            try:
                counts = await hostile.abuse(self.edge_port, self.freeze_s)
            except OSError as exc:  # 127.0.0.2 not usable here
                injected.error = f"hostile source: {exc}"
                return time.monotonic() - started
            injected.detail += ": " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())
                                                if v)
            if counts.get("odd_leaked"):
                injected.error = f"the edge answered {counts['odd_leaked']} odd or operator " \
                                 f"requests"
            return time.monotonic() - started

        injected.back = run()
        return injected

    async def close(self) -> None:
        for pid in list(self._frozen):
            self._thaw(pid)


@dataclass
class Faults:
    """Hooks first, else the local stack."""

    hooks: Hooks
    local: LocalStack | None

    def check(self, kinds: Sequence[str]) -> None:
        for kind in sorted(set(kinds)):
            if not self.hooks.can(kind) and self.local is None:
                raise FaultError(f"no hook for {kind} and no running ssedge up here: give "
                                 f"--hook {kind}='COMMAND' (or --stack DIR)")

    async def inject(self, kind: str) -> Injected:
        if self.hooks.can(kind):
            return await self.hooks.inject(kind)
        assert self.local is not None
        return await self.local.inject(kind)

    async def close(self) -> None:
        await self.hooks.close()
        if self.local is not None:
            await self.local.close()
