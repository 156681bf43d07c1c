"""Supervision of a local stack's children, the way systemd (``Restart=always``) or a container
orchestrator does it: a child that exits without being asked to is started again on its port
after a backoff, while the others keep serving; one that cannot stay up is given up on and the
stack stops, non-zero.

- **Backoff**: 0.5 s, doubling up to 10 s; a child that stayed up 30 s starts afresh at 0.5 s.
- **Crash loop**: a child that exits again after 5 restarts within 60 s (systemd's
  ``StartLimitBurst``/``StartLimitIntervalSec``) is reported and the stack stops, exit 1.
- **Leftovers**: every child runs in a process group of its own. When its leader exits, what
  is left of the group (a Granian master's workers, varnishd's cache process, a collector's
  ``varnishncsa``) is killed, and the restart waits until that is gone: an orphaned relay
  worker would otherwise keep serving on the port beside the new node (SO_REUSEPORT), and a
  varnishd child still holding the listening socket makes the new one fail. (systemd's
  ``KillMode=control-group`` does the same.)
- **Status**: each change is written to ``supervisor.json`` in the stack's directory (pid,
  state, restarts and last exit of every child): the dashboard's collector shows it, and
  ``ssedge drill`` finds the processes it injects faults into there.

``Child`` is the bookkeeping of one child, plain state tested without processes
(``tests/test_supervisor.py``); ``Supervisor`` runs the processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from relay.harness.processes import SETPRIV, group_members, kill_group, port_open
from relay.stackstatus import STATUS_FILE

State = Literal["starting", "up", "backoff", "failed", "stopped"]
POLL_S = 0.1


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When a child that exited starts again, and when the stack gives up on it."""

    first_delay_s: float = 0.5
    max_delay_s: float = 10.0
    #: up this long, the next exit starts the backoff afresh
    stable_s: float = 30.0
    #: restarts within ``window_s`` after which one more exit is a crash loop
    burst: int = 5
    window_s: float = 60.0
    #: a (re)started child that does not open its port within this is killed: a failed start
    start_timeout_s: float = 20.0
    #: on stop: SIGTERM, then SIGKILL of its group after this
    stop_timeout_s: float = 10.0

    def delay(self, failures: int) -> float:
        """The wait before restart number ``failures`` since the child last stayed up."""
        return min(self.max_delay_s, self.first_delay_s * 2.0 ** max(0, failures - 1))


class StartFailed(RuntimeError):
    """A child did not come up when the stack started."""


@dataclass
class Child:
    """One supervised child: what it runs, where it listens, and what happened to it."""

    name: str
    port: int  # 0: listens on none (up as soon as it runs)
    argv: list[str]
    #: its own settings over the stack's (a second region's relays read another Redis)
    env: dict[str, str] = field(default_factory=dict)
    state: State = "starting"
    pid: int | None = None
    restarts: int = 0
    #: exits since the child last stayed up ``stable_s``: the backoff's exponent
    failures: int = 0
    #: when each restart within the crash-loop window happened (monotonic)
    recent: deque[float] = field(default_factory=deque)
    last_exit: int | None = None
    last_exit_at: float | None = None
    since: float = 0.0  # when the current state began (monotonic)
    due: float = 0.0  # in backoff: when to start again (monotonic)

    def started(self, pid: int, now: float) -> None:
        self.pid, self.state, self.since = pid, "starting", now

    def restarted(self, pid: int, now: float) -> None:
        self.restarts += 1
        self.recent.append(now)
        self.started(pid, now)

    def ready(self, now: float) -> None:
        self.state, self.since = "up", now

    def exited(self, code: int, now: float, policy: RestartPolicy) -> float | None:
        """Note an exit nobody asked for: the delay before the restart, or None when this is
        a crash loop (the child is then ``failed``)."""
        stable = self.state == "up" and now - self.since >= policy.stable_s
        self.failures = 1 if stable else self.failures + 1
        self.last_exit, self.last_exit_at = code, now
        while self.recent and now - self.recent[0] > policy.window_s:
            self.recent.popleft()
        if len(self.recent) >= policy.burst:
            self.state, self.since = "failed", now
            return None
        delay = policy.delay(self.failures)
        self.state, self.since, self.due = "backoff", now, now + delay
        return delay

    def stopped(self, now: float) -> None:
        self.state, self.since = "stopped", now

    def status(self, wall: Callable[[float], float]) -> dict[str, Any]:
        """What ``supervisor.json`` says of this child (times as Unix seconds)."""
        exit_at = None if self.last_exit_at is None else round(wall(self.last_exit_at), 3)
        return {
            "name": self.name, "port": self.port, "pid": self.pid, "state": self.state,
            "since": round(wall(self.since), 3), "restarts": self.restarts,
            "last_exit": self.last_exit, "last_exit_at": exit_at,
        }


def exit_text(code: int) -> str:
    """``-9 SIGKILL`` for a signal, ``1`` for an exit status."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"{code} {signal.Signals(-code).name}"
    return str(code)


class Supervisor:
    """Starts children in order, restarts the ones that exit, stops them all in reverse order.

    ``stop`` is set by SIGINT and SIGTERM (handlers are installed explicitly: a stack started
    from a script may inherit SIGINT ignored) and by a crash loop."""

    def __init__(self, directory: Path, env: dict[str, str],
                 policy: RestartPolicy | None = None) -> None:
        self.directory = directory
        self.env = {**os.environ, **env}
        self.policy = policy or RestartPolicy()
        self.children: list[Child] = []
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.stop = threading.Event()
        self.failure: str | None = None
        self.state = "starting"
        self.status_path = directory / STATUS_FILE
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop.set())

    # -- start ------------------------------------------------------------------------------

    def start(self, name: str, port: int, argv: list[str],
              env: dict[str, str] | None = None) -> None:
        """Start a child (``env`` over the stack's) and wait for its port; StartFailed if it
        does not come up."""
        child = Child(name, port, argv, dict(env or {}))
        self.children.append(child)
        self._spawn(child, restart=False)
        deadline = time.monotonic() + self.policy.start_timeout_s
        process = self.processes[name]
        while port and not port_open(port):
            if self.stop.is_set():
                raise KeyboardInterrupt
            if process.poll() is not None:
                raise StartFailed(f"{name} exited ({exit_text(process.returncode)}) while "
                                  f"starting; see {self._log(name)}")
            if time.monotonic() > deadline:
                raise StartFailed(f"{name} did not open port {port} within "
                                  f"{self.policy.start_timeout_s:g} s; see {self._log(name)}")
            time.sleep(0.05)
        child.ready(time.monotonic())
        self._write_status()

    def _log(self, name: str) -> Path:
        return self.directory / f"{name}.log"

    def _spawn(self, child: Child, *, restart: bool) -> None:
        log = open(self._log(child.name), "ab")  # noqa: SIM115 - lives as the child
        # A stack killed without a word (SIGKILL, the OOM killer) must not leave its children
        # holding the ports: each gets SIGTERM when the stack dies (setpriv sets the parent
        # death signal and execs the child, so the pid is the child's). It fires when the
        # thread that forked exits: every child is started from the thread that serves.
        argv = [SETPRIV, "--pdeathsig", "TERM", "--", *child.argv] if SETPRIV else child.argv
        try:
            process = subprocess.Popen(argv, env={**self.env, **child.env}, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()  # the child holds its own copy
        self.processes[child.name] = process
        if restart:
            child.restarted(process.pid, time.monotonic())
        else:
            child.started(process.pid, time.monotonic())

    # -- run --------------------------------------------------------------------------------

    def serve(self, up: Callable[[], str]) -> int:
        """Start the stack with ``up``, supervise it until Ctrl-C, SIGTERM or a crash loop,
        then stop every child (also when ``up`` failed half way). 0, or 1 after a failure.

        ``up`` returns the stack's banner, printed once the status file says it runs: what
        reads the banner (a user, a test, then ``ssedge drill``) finds the stack running."""
        try:
            banner = up()
            self.state = "running"
            self._write_status()
            print(banner, flush=True)
            self._supervise()
        except KeyboardInterrupt:
            pass
        except RuntimeError as exc:  # StartFailed, or a local cluster that did not form
            self.failure = str(exc)
            print(f"ssedge up: {exc}", file=sys.stderr, flush=True)
        finally:
            self.stop_all()
        return 1 if self.failure else 0

    def _supervise(self) -> None:
        while not self.stop.wait(POLL_S):
            now = time.monotonic()
            for child in self.children:
                self._check(child, now)
                if self.failure:
                    return

    def _check(self, child: Child, now: float) -> None:
        process = self.processes[child.name]
        if child.state in ("starting", "up"):
            code = process.poll()
            if code is not None:
                self._exited(child, code, now)
            elif child.state == "starting":
                if not child.port or port_open(child.port):
                    took = now - child.since
                    child.ready(now)
                    print(f"ssedge up: {child.name} is back (pid {child.pid}) after "
                          f"{took:.1f} s", flush=True)
                    self._write_status()
                elif now - child.since > self.policy.start_timeout_s:
                    print(f"ssedge up: {child.name} did not open port {child.port} within "
                          f"{self.policy.start_timeout_s:g} s", flush=True)
                    kill_group(process.pid)
                    self._exited(child, process.wait(), now)
        elif child.state == "backoff" and now >= child.due:
            leftovers = group_members(process.pid)
            if leftovers and now < child.due + self.policy.stop_timeout_s:
                kill_group(process.pid)  # still exiting: wait, they hold its port
                return
            self._spawn(child, restart=True)
            self._write_status()

    def _exited(self, child: Child, code: int, now: float) -> None:
        process = self.processes[child.name]
        kill_group(process.pid)  # what is left of its group: workers, a cache process
        delay = child.exited(code, now, self.policy)
        if delay is None:
            self.failure = (
                f"{child.name} keeps exiting: it exited ({exit_text(code)}) after "
                f"{len(child.recent)} restarts within {self.policy.window_s:g} s; giving up "
                f"and stopping the stack; see {self._log(child.name)}")
            print(f"ssedge up: {self.failure}", file=sys.stderr, flush=True)
            self.stop.set()
        else:
            print(f"ssedge up: {child.name} exited ({exit_text(code)}); restarting in "
                  f"{delay:g} s (restart {child.restarts + 1})", flush=True)
        self._write_status()

    # -- stop -------------------------------------------------------------------------------

    def stop_all(self) -> None:
        """Stop every child in reverse start order: SIGTERM to its leader (Granian's master
        drains and stops its workers), SIGKILL to its whole group after the stop timeout."""
        self.stop.set()
        self.state = "stopping"
        self._write_status()
        for child in reversed(self.children):
            process = self.processes.get(child.name)
            if process is None:
                continue
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(self.policy.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    print(f"ssedge up: {child.name} did not stop within "
                          f"{self.policy.stop_timeout_s:g} s: SIGKILL", file=sys.stderr)
                    kill_group(process.pid)
                    process.wait()
            kill_group(process.pid)
            if child.state != "failed":
                child.stopped(time.monotonic())
        self.state = "failed" if self.failure else "stopped"
        self._write_status()

    # -- status -----------------------------------------------------------------------------

    def _write_status(self) -> None:
        """``supervisor.json``, replaced atomically (readers never see half a file)."""
        offset = time.time() - time.monotonic()
        status = {
            "pid": os.getpid(), "state": self.state, "failure": self.failure,
            "updated": round(time.time(), 3),
            "children": [c.status(lambda t: t + offset) for c in self.children],
        }
        tmp = self.status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(status, indent=1) + "\n")
        tmp.replace(self.status_path)
