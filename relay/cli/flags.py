"""Which settings each command takes as flags: the ones it uses, no others.

A flag a command would ignore (``ssedge replay --port``: the replay service listens on
``--replay-port``) is refused like any unknown flag. Every setting still comes from its
``SSEDGE_*`` variable (or ``SSEDGE_*_FILE``) in every command: one environment file serves
the whole deployment.

The groups go by name, so a setting added later lands where its name says: ``redis_*`` with
every command that talks to Redis, ``log_*`` with every server, anything else with the relay
(``tests/cli/test_flags.py`` checks each setting is some command's flag).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from relay import settings as settings_mod

#: every server process: its logs and the Redis it reads
_EVERY_SERVER = ("redis_", "log_", "node_name")
#: a Granian server (relay, replay service): processes, connections, the listener's TCP,
#: the access log of its HTTP API
_GRANIAN = ("workers", "max_connections", "drain_s", "tcp_", "access_log")
#: reading a private topic: the token checks the relay and the replay service share
_TOKENS = ("private_topics", "jwt_", "jwks_")
#: the replay service's own, which a relay does not use
_REPLAY_ONLY = ("replay_host", "replay_port", "replay_open_max_age_s", "replay_limit_max")
#: a relay's own, though its name says Redis: when a relay steps out of the edge
_RELAY_ONLY = ("redis_grace_s",)
#: how pages are cut: the relay (reading Redis itself) and the replay service alike
_PAGES = ("replay_page", "replay_page_bytes")
#: reading a nearby replica (regions): the relay and the replay service; ingest and the
#: collector write, to the primary only
_READERS = ("redis_read_url", "replica_wait_s")


def _relay(name: str) -> bool:
    return not name.startswith(("ingest_", *_REPLAY_ONLY))


def _replay(name: str) -> bool:
    if name in _RELAY_ONLY:
        return False
    return (name.startswith((*_EVERY_SERVER, *_GRANIAN, *_TOKENS, "cors_origin"))
            or name in (*_REPLAY_ONLY, *_PAGES, *_READERS))


def _ingest(name: str) -> bool:
    if name in (*_RELAY_ONLY, *_READERS):
        return False
    return name.startswith((*_EVERY_SERVER, "ingest_", "max_body_bytes", "retention_"))


def _stats(name: str) -> bool:
    return name not in (*_RELAY_ONLY, *_READERS) and name.startswith(("redis_", "log_"))


TAKES: dict[str, Callable[[str], bool]] = {
    "relay": _relay, "replay": _replay, "ingest": _ingest, "stats": _stats,
}


def names(command: str) -> list[str]:
    """The settings ``command`` takes as flags, in the settings' order."""
    takes = TAKES[command]
    return [name for name, _, _ in settings_mod.fields() if takes(name)]


def add(parser: argparse.ArgumentParser, command: str) -> None:
    group = parser.add_argument_group(
        "settings", "each also from its SSEDGE_* variable, or SSEDGE_*_FILE (a file holding "
                    "it); a flag wins")
    for name, default, doc in settings_mod.fields():
        if TAKES[command](name):
            group.add_argument("--" + name.replace("_", "-"), dest=name, default=None,
                               help=f"{doc} [{settings_mod.env_name(name)}, default "
                                    f"{default!r}]")


def load(args: argparse.Namespace, command: str) -> settings_mod.Settings:
    """The settings: the environment, then the command's flags."""
    return settings_mod.load(**{name: getattr(args, name) for name in names(command)})
