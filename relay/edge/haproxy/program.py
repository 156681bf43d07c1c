"""HAProxy as an edge program (``relay.edge.contract``): in front of the relays and varnishd."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from relay.edge.contract import Address, EdgeProgram
from relay.edge.haproxy import config, stats
from relay.edge.haproxy.admin import Admin


class HAProxy(EdgeProgram):
    """``haproxy.cfg`` rendered with ``listen``'s addresses; its stats from the runtime API."""

    name = "haproxy"
    config_file = "haproxy.cfg"

    def __init__(self, listen: config.Listen, *, timeout: float = 5.0) -> None:
        self.listen = listen
        self.admin = Admin(listen.admin_socket, timeout=timeout)
        # its numbers are read on the reading socket (level operator)
        self.reader = Admin(listen.read_socket, timeout=timeout)

    def render(self, relays: Sequence[Address]) -> dict[str, str]:
        return {self.config_file: config.render(relays, self.listen)}

    def check_command(self, directory: Path) -> list[str]:
        return config.check_command(directory / self.config_file)

    def command(self, directory: Path) -> list[str]:
        return config.command((directory / self.config_file).resolve())

    def refusal(self, output: str) -> str:
        # "[ALERT]    (123) : config : parsing [file:96] : what is wrong"
        said = output.splitlines()
        alerts = [line.split(" : ", 2)[-1] for line in said if "ALERT" in line]
        return (alerts or said or ["no reason given"])[0].strip()

    def stats(self) -> dict[str, Any]:
        """Streams, connections and each relay's state as ``show stat`` says."""
        return stats.proxy_snapshot(self.reader.stat())
