"""The servers the fan-out benchmark compares, each started on a free loopback port and stopped
by its PID (process group), and what it costs: CPU seconds and resident memory of every
process that serves it (relay workers, Redis, varnishd, nginx workers, uvicorn).

Each server says how a client subscribes (port and path of a topic) and how the publisher
reaches it (``sseload pub`` mode, port and target).
"""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
from pathlib import Path

from relay.harness.processes import free_port, port_open, spawn, stop_group, wait_until
from relay.harness.servers import Relay, Varnish

TOKEN = "bench"
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
NCHAN_MODULE = "/usr/lib/nginx/modules/ngx_nchan_module.so"


def version_of(argv: list[str]) -> str:
    """The first line a program says of its version (``redis-server --version``), or ``?``."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "?"
    return ((p.stdout + p.stderr).strip().splitlines() or ["?"])[0]


def machine() -> str:
    """CPUs, their model and the platform: a figure's machine."""
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    return f"{os.cpu_count()} CPUs ({cpu}), {platform.platform()}"


def _wait_port(port: int, process: subprocess.Popen[bytes], what: str, timeout: float = 20) -> None:
    wait_until(lambda: port_open(port), timeout, what, process)


def tree(root: int) -> list[int]:
    """``root`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICK


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


class Server:
    name = ""
    pub_mode = ""
    publish_port = 0
    port = 0
    roots: list[int]
    process: subprocess.Popen[bytes]

    # the peers' layout (Nchan's locations and the sse-starlette app); ssedge has its own
    def sub_path(self, topic: str) -> str:
        return f"/sub/{topic}"

    def pub_target(self, topic: str) -> str:
        return f"/pub/{topic}"

    def pids(self) -> list[int]:
        return [pid for root in self.roots for pid in tree(root)]

    def parts(self) -> dict[str, list[int]]:
        """The processes of each part of the server, for the CPU split."""
        return {"all": self.pids()}

    def stop(self) -> None:
        stop_group(self.process, signal.SIGTERM)  # nginx: its fast shutdown


class BenchRedis:
    """redis-server without persistence: the stream is what the relays read, not the disk."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = spawn(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                              "--dir", str(directory), "--appendonly", "no", "--save", "",
                              "--protected-mode", "no"], directory / "redis.log", None)
        _wait_port(self.port, self.process, "redis-server")

    def stop(self) -> None:
        stop_group(self.process, signal.SIGTERM)


class Ssedge(Server):
    """A relay (1 or 2 Granian workers) and its Redis; with ``edge``, varnishd in front."""

    pub_mode = "redis"

    def __init__(self, directory: Path, *, workers: int, edge: bool = False,
                 max_streams: int = 12_000, multi: tuple[int, int] | None = None) -> None:
        # ``multi``: streams on several topics, (topics in all, topics per stream)
        self.multi = multi
        self.name = f"ssedge {workers}w" + (" + varnish" if edge else "") + (
            f", {multi[1]} of {multi[0]} topics" if multi else "")
        self.redis = BenchRedis(directory / "redis")
        self.publish_port = self.redis.port
        self.varnish: Varnish | None = None
        try:
            self.relay = Relay(directory, self.redis, TOKEN, workers=workers,  # type: ignore[arg-type]
                               max_connections=max_streams + 100, max_streams=max_streams,
                               topic_linger_s=0)
            self.port = self.relay.port
            self.roots = [self.relay.pid, self.redis.process.pid]
            if edge:
                # one stream holds two varnishd threads; a varnishd holds two descriptors
                # per stream, so RLIMIT_NOFILE (20,000 here) caps it below 10,000 streams
                self.varnish = Varnish(directory / "varnish", [self.relay], None,
                                       extra_params=("thread_pool_max=6000",))
                self.port = self.varnish.port
                self.roots.append(self.varnish.process.pid)
        except BaseException:
            self.stop()
            raise

    def sub_path(self, topic: str) -> str:
        return "/v1/streams/events" if self.multi else f"/v1/streams/{topic}/events"

    def pub_target(self, topic: str) -> str:
        # several topics: the load client's topic j is ``topic-j``, sseload's ``%d``
        return "ssedge:{" + topic + ("-%d" if self.multi else "") + "}"

    def parts(self) -> dict[str, list[int]]:
        parts = {"relay": tree(self.relay.pid), "redis": [self.redis.process.pid]}
        if self.varnish is not None:
            parts["varnish"] = tree(self.varnish.process.pid)
        return parts

    def worker_pids(self) -> list[int]:
        return [pid for pid in tree(self.relay.pid) if pid != self.relay.pid]

    def stop(self) -> None:
        for server in (self.varnish, getattr(self, "relay", None)):
            if server is not None:
                server.stop()
        self.redis.stop()


NGINX_CONF = """\
load_module {module};
daemon off;
master_process on;
worker_processes {workers};
worker_rlimit_nofile 20000;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 19000; multi_accept on; }}
http {{
    access_log off;
    # the benchmark's publisher keeps one connection for every POST of a run (nginx's default
    # closes a keep-alive connection after 1,000 requests)
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location ~ ^/sub/([\\w.:-]+)$ {{
            nchan_subscriber eventsource;
            nchan_channel_id $1;
        }}
        location ~ ^/pub/([\\w.:-]+)$ {{
            nchan_publisher;
            nchan_channel_id $1;
            nchan_message_buffer_length 2000;
        }}
    }}
}}
"""


class Nchan(Server):
    """nginx with Debian's Nchan module, ``workers`` worker processes."""

    pub_mode = "post"

    def __init__(self, directory: Path, *, workers: int = 1) -> None:
        self.name = f"nginx+nchan {workers}w"
        directory.mkdir(parents=True, exist_ok=True)
        self.port = self.publish_port = free_port()
        conf = directory / "nginx.conf"
        conf.write_text(NGINX_CONF.format(module=NCHAN_MODULE, workers=workers, dir=directory,
                                          port=self.port))
        self.process = spawn(["nginx", "-c", str(conf), "-p", str(directory)],
                             directory / "nginx.log", None)
        _wait_port(self.port, self.process, "nginx")
        self.roots = [self.process.pid]


class Starlette(Server):
    """sse-starlette on uvicorn (uvloop, httptools), one process."""

    pub_mode = "lines"

    def __init__(self, directory: Path) -> None:
        self.name = "sse-starlette"
        directory.mkdir(parents=True, exist_ok=True)
        self.port = self.publish_port = free_port()
        self.process = spawn(
            [sys.executable, "-m", "uvicorn", "bench.starlette_peer:app", "--host", "127.0.0.1",
             "--port", str(self.port), "--loop", "uvloop", "--http", "httptools",
             "--no-access-log", "--backlog", "4096", "--log-level", "warning"],
            directory / "uvicorn.log", None)
        _wait_port(self.port, self.process, "uvicorn")
        self.roots = [self.process.pid]
