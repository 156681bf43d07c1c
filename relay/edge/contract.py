"""What a program at the edge provides: the contract each edge part keeps, so that another one
(nginx, a CDN's configuration) has a place to go and a short list of what to write.

Four things, each a method of ``EdgeProgram``:

- **render** its configuration for a deployment's relay nodes: the files, by name, with
  nothing changed but the deployment's values, so what runs is what is shipped;
- **check** it with the program's own checker, before anything is started on it: a refusal is
  ``ConfigRefused`` with the program's one-line reason;
- **start** it for a local stack: the command line in the foreground, under whatever starts
  and supervises the stack's children (a ``Launcher``: ``ssedge up``'s supervisor);
- **stats**: its numbers as it reports them (the dashboard and the tests read them).

Beside this module: ``haproxy.program.HAProxy`` (in front: streams and publishes straight to the
relays, limits, TLS) and ``varnish.program.Varnish`` (the protocol cache behind it). The local
stack puts the two together (``relay.devstack.edge``); production installs their rendered files
(docs/DEPLOY.md).
"""

from __future__ import annotations

import subprocess
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

#: a relay node, or another backend: host and port
Address = tuple[str, int]


class ConfigRefused(Exception):
    """The program's checker refused a configuration; the message is its first reason."""


class Launcher(Protocol):
    """What starts a local stack's children and keeps them up (``relay.devstack.supervisor``)."""

    def start(self, name: str, port: int, argv: list[str],
              env: dict[str, str] | None = None) -> None: ...


class EdgeProgram(ABC):
    """One program at the edge, configured for one deployment (its listeners, its backends)."""

    #: the program's name: a local stack's child, the file its configuration is written to
    name: ClassVar[str]
    #: the file of ``render``'s that the program is started and checked with
    config_file: ClassVar[str]

    @abstractmethod
    def render(self, relays: Sequence[Address]) -> dict[str, str]:
        """The configuration for these relay nodes: file name -> text."""

    @abstractmethod
    def check_command(self, directory: Path) -> list[str]:
        """The program's own check of the configuration written to ``directory``."""

    @abstractmethod
    def command(self, directory: Path) -> list[str]:
        """The program in the foreground on the configuration in ``directory``."""

    @abstractmethod
    def stats(self) -> dict[str, Any]:
        """The running program's numbers, as it reports them."""

    def write(self, directory: Path, relays: Sequence[Address]) -> Path:
        """Every file of ``render`` written to ``directory``; the main one's path."""
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in self.render(relays).items():
            (directory / name).write_text(text)
        return directory / self.config_file

    def refusal(self, output: str) -> str:
        """The one line worth showing of what the checker said (the first, by default)."""
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        return lines[0] if lines else "no reason given"

    def check(self, directory: Path) -> None:
        """Run the checker; ``ConfigRefused`` with its reason when it refuses."""
        result = subprocess.run(self.check_command(directory), capture_output=True, text=True,
                                timeout=60, check=False)
        if result.returncode != 0:
            raise ConfigRefused(f"{self.name} refuses {directory / self.config_file}: "
                                f"{self.refusal(result.stdout + result.stderr)}")

    def start(self, launcher: Launcher, directory: Path, port: int, name: str = "") -> None:
        """Start the program for a local stack, as the child ``name`` (its own by default)."""
        launcher.start(name or self.name, port, self.command(directory))
