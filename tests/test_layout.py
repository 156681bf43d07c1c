"""The tree keeps its layering: the protocol imports no I/O, and the load tests nothing of ours
but the protocol (importing locust patches the whole process with gevent: what Locust runs
must not bring the relays' asyncio and Redis code along). The protocol's own test proves
what "nothing but the protocol" brings: no asyncio, no Redis."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported(folder: Path) -> dict[str, set[str]]:
    """Every module each file of ``folder`` imports (absolute names)."""
    out: dict[str, set[str]] = {}
    for path in folder.rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
        out[str(path.relative_to(ROOT))] = names
    return out


def test_the_protocol_imports_no_io() -> None:
    for path, names in imported(ROOT / "relay" / "protocol").items():
        io = {n for n in names if n.split(".")[0] in ("asyncio", "redis", "granian", "socket")}
        ours = {n for n in names if n.startswith("relay.") and not n.startswith("relay.protocol")}
        assert not io and not ours, f"{path} imports {sorted(io | ours)}"


def test_the_load_tests_import_nothing_of_ours_but_the_protocol() -> None:
    for path, names in imported(ROOT / "loadtests").items():
        ours = {n for n in names if n.split(".")[0] in ("relay", "replay")}
        others = {n for n in ours if not n.startswith("relay.protocol")}
        assert (ours and not others) or not ours, f"{path} imports {sorted(others)}"


def test_relay_imports_no_load_test_code() -> None:
    for path, names in imported(ROOT / "relay").items():
        assert not {n for n in names if n.split(".")[0] == "loadtests"}, path
