"""varnishd as an edge program (``relay.edge.contract``): the protocol cache behind HAProxy."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from relay.edge.contract import Address, EdgeProgram
from relay.edge.varnish import config


class Varnish(EdgeProgram):
    """The shipped VCL on ``listen`` with a generated ``backends.vcl`` (the relays and the
    replay service); its working directory ``workdir`` (``varnishadm``, ``varnishstat -n``)."""

    name = "varnish"
    config_file = "backends.vcl"

    def __init__(self, listen: str, replay: Address, workdir: Path, *,
                 extra_params: Sequence[str] = (), storage: str = "malloc,256m") -> None:
        self.listen = listen
        self.replay = replay
        self.workdir = workdir
        self.extra_params = tuple(extra_params)
        self.storage = storage

    def render(self, relays: Sequence[Address]) -> dict[str, str]:
        return {self.config_file: config.backends_vcl(relays, self.replay)}

    def check_command(self, directory: Path) -> list[str]:
        return config.compile_check(directory)

    def command(self, directory: Path) -> list[str]:
        return config.command(self.workdir, self.listen, directory,
                              extra_params=self.extra_params, storage=self.storage)

    def stats(self) -> dict[str, Any]:
        """varnishd's counters (``varnishstat``): cache hits, backend requests, …"""
        return config.counters(self.workdir)
