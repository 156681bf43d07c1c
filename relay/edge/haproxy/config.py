"""HAProxy's configuration as the edge runs it, and its command lines.

``haproxy.cfg`` (beside this module) is a plain HAProxy config whose addresses and paths are
``presetenv`` lines in ``global`` and whose relay nodes sit between two marker comments in
``backend relays``. ``render`` writes a copy with a deployment's values (``make up``, the tests, the
benchmarks): nothing else in the file changes, so what runs is what is shipped.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from relay.edge.haproxy.limits import DEFAULT, Limits

# shipped in the wheel beside this module (package data)
TEMPLATE = Path(__file__).resolve().parent / "haproxy.cfg"
BEGIN = "# -- relay nodes"
END = "# -- end of relay nodes --"


def haproxy() -> str | None:
    """Debian installs haproxy in /usr/sbin, which a user's PATH may not hold."""
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")


class ConfigError(ValueError):
    """The template lacks what ``render`` must set (a setting or the relay markers)."""


@dataclass(frozen=True, slots=True)
class Listen:
    """What one edge listens on and talks to (``host:port`` strings, paths)."""

    http: str
    cache: str  # varnishd
    stats: str
    admin_socket: Path
    https: str | None = None  # None: no TLS listener
    cert: Path | None = None
    stream_timeout: str = "60s"
    maxconn: int | None = None  # None: the template's
    # the per-client limits and the networks exempt from them (relay/edge/haproxy/limits.py)
    limits: Limits = DEFAULT
    # the runtime API's reading socket (level operator); None: stats.sock beside admin_socket
    stats_socket: Path | None = None

    @property
    def read_socket(self) -> Path:
        return self.stats_socket or self.admin_socket.with_name("stats.sock")


def _set_env(text: str, name: str, value: str) -> str:
    pattern = re.compile(rf"^(\s*presetenv {name} ).*$", re.MULTILINE)
    if not pattern.search(text):
        raise ConfigError(f"no `presetenv {name}` in {TEMPLATE}")
    # a function, not a replacement string: a path may hold backslashes
    return pattern.sub(lambda m: m.group(1) + value, text, count=1)


def _set_exempt(text: str, networks: list[str]) -> str:
    pattern = re.compile(r"^(\s*acl limits_exempt ).*$", re.MULTILINE)
    if not pattern.search(text):
        raise ConfigError(f"no `acl limits_exempt` in {TEMPLATE}")
    if any(not re.fullmatch(r"[0-9A-Fa-f:.]+(/[0-9]{1,3})?", n) for n in networks):
        raise ConfigError(f"the networks exempt from the edge's limits are addresses or "
                          f"CIDRs: {', '.join(networks)}")
    acl = "src " + " ".join(networks) if networks else "always_false"
    return pattern.sub(lambda m: m.group(1) + acl, text, count=1)


def render(relays: Sequence[tuple[str, int]], listen: Listen, template: str | None = None) -> str:
    """The template with ``listen``'s addresses and these relay nodes."""
    text = TEMPLATE.read_text() if template is None else template
    for name, value in (("EDGE_HTTP_ADDR", listen.http), ("EDGE_CACHE_ADDR", listen.cache),
                        ("EDGE_STATS_ADDR", listen.stats),
                        ("EDGE_ADMIN_SOCKET", str(listen.admin_socket)),
                        ("EDGE_STATS_SOCKET", str(listen.read_socket)),
                        ("EDGE_STREAM_TIMEOUT", listen.stream_timeout)):
        text = _set_env(text, name, value)
    for name, value in listen.limits.env().items():
        text = _set_env(text, name, value)
    text = _set_exempt(text, listen.limits.networks())
    if listen.maxconn is not None:
        text = _set_env(text, "EDGE_MAXCONN", str(listen.maxconn))
    if listen.https is None:
        # no TLS listener: its bind line goes (HAProxy would otherwise need a certificate)
        text = re.sub(r"^\s*bind \"\$\{EDGE_HTTPS_ADDR\}\".*\n", "", text, flags=re.MULTILINE)
    else:
        if listen.cert is None:
            raise ConfigError("a TLS listener needs a certificate")
        text = _set_env(text, "EDGE_HTTPS_ADDR", listen.https)
        text = _set_env(text, "EDGE_CERT", str(listen.cert))
    if text.find(BEGIN) < 0:
        raise ConfigError(f"no relay node markers ({BEGIN!r} … {END!r}) in {TEMPLATE}")
    out, at = [], 0
    while (start := text.find(BEGIN, at)) >= 0:  # each backend of relays: streams, publishes
        end = text.find(END, start)
        if end < 0 or text.find(BEGIN, start + len(BEGIN), end) >= 0:
            raise ConfigError(f"relay node markers ({BEGIN!r} … {END!r}) unclosed in {TEMPLATE}")
        line_end = text.index("\n", start) + 1
        indent = text[text.rfind("\n", 0, start) + 1:start]
        # what follows the address on the template's first node line, e.g. `track
        # relays/relay_1` in `backend publishes`, is kept, renamed for each node
        first = re.search(r"^\s*server relay_1 \S+(.*)$", text[line_end:end], re.MULTILINE)
        rest = first.group(1) if first else ""
        out += [text[at:line_end], *(f"{indent}server relay_{n} {host}:{port}"
                                     f"{rest.replace('relay_1', f'relay_{n}')}\n"
                                     for n, (host, port) in enumerate(relays, 1))]
        at = text.rfind("\n", 0, end) + 1
    return "".join(out) + text[at:]


def write(directory: Path, relays: Sequence[tuple[str, int]], listen: Listen) -> Path:
    """``directory/haproxy.cfg`` rendered; its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "haproxy.cfg"
    path.write_text(render(relays, listen))
    return path


def command(config: Path) -> list[str]:
    """HAProxy in the foreground, master-worker: the master stays (one pid to supervise) and
    a SIGUSR2 to it reloads the config without dropping streams (the old worker keeps its
    streams until ``hard-stop-after``)."""
    return [haproxy() or "haproxy", "-W", "-db", "-f", str(config)]


def check_command(config: Path) -> list[str]:
    """The command that checks a config without running it."""
    return [haproxy() or "haproxy", "-c", "-f", str(config)]
