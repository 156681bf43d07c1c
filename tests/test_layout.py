"""The tree keeps its layering: the protocol imports no I/O, and the load tests nothing of ours
but the protocol (importing locust patches the whole process with gevent: what Locust runs
must not bring the relays' asyncio and Redis code along). The protocol's own test proves
what "nothing but the protocol" brings: no asyncio, no Redis.

The folders (and top modules) of relay/, and replay/, stand in layers (``LAYERS``, lowest
first): each imports only from layers below its own, so there is no cycle and no folder
imports one above it. What runs in production never imports the local stacks (devstack/) or
the harness of the tests and benchmarks (harness/); the command line imports them only inside
the commands that start a local stack."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: lowest first; a part may import only parts of a lower layer (docs/ARCHITECTURE.md, the tree)
LAYERS: tuple[tuple[str, ...], ...] = (
    ("protocol",),                                                   # SSE and resuming, no I/O
    ("settings", "logs", "prometheus", "duration", "stackstatus",    # one of each, no Redis
     "backoff"),
    ("storage", "scrape"),                                           # Redis; one /metrics
    ("web",),                                                        # HTTP around the node
    ("node", "ingest", "replay"),                                    # the servers
    ("edge",),                                                       # the programs in front
    ("dashboard", "drill", "harness"),                               # operator tools; tests'
    ("devstack",),                                                   # the local stacks
    ("cli",),                                                        # the command line
    ("__main__",),
)
#: what never runs in production, and who may import it
NOT_SHIPPED_TO_PRODUCTION = ("devstack", "harness")


def part(module: str) -> str | None:
    """The part of the tree a module (absolute name) belongs to: relay's folder or top module,
    or ``replay``; None for anything not ours."""
    names = module.split(".")
    if names[0] == "replay":
        return "replay"
    if names[0] == "relay" and len(names) > 1 and names[1] != "__version__":
        return names[1]
    return None


def graph() -> dict[str, set[str]]:
    """Which parts each part imports (anywhere in its files, functions too)."""
    out: dict[str, set[str]] = defaultdict(set)
    for folder in ("relay", "replay"):
        for path, names in imported(ROOT / folder).items():
            parts = Path(path).with_suffix("").parts
            source = part(".".join(parts)) or parts[-1]
            if source == "__init__":  # relay/__init__.py: the version, nothing imported
                continue
            out[source].update(p for p in map(part, names) if p and p != source)
    return out


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


def test_every_part_has_a_layer() -> None:
    placed = {name for layer in LAYERS for name in layer}
    found = set(graph()) | {p for targets in graph().values() for p in targets}
    found |= {p.stem for p in (ROOT / "relay").glob("*.py") if p.stem != "__init__"}
    found |= {p.name for p in (ROOT / "relay").iterdir()
              if p.is_dir() and (p / "__init__.py").is_file()}
    assert found <= placed, f"not in LAYERS: {sorted(found - placed)}"


def test_no_part_imports_one_of_its_own_layer_or_above() -> None:
    level = {name: n for n, layer in enumerate(LAYERS) for name in layer}
    upward = sorted(f"{source} -> {target}" for source, targets in graph().items()
                    for target in targets if level[target] >= level[source])
    assert not upward, f"imports of a part not below: {upward}"


def test_no_cycle_between_parts() -> None:
    edges = graph()
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            assert state.get(nxt) != 1, f"cycle: {' -> '.join([*path, node, nxt])}"
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])


def _module_level(path: Path) -> set[str]:
    """What a file imports outside its functions (what importing it brings along)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_production_imports_no_local_stack_and_no_harness() -> None:
    for source, targets in graph().items():
        if source not in (*NOT_SHIPPED_TO_PRODUCTION, "cli", "__main__"):
            assert not targets & set(NOT_SHIPPED_TO_PRODUCTION), (source, sorted(targets))
    # the command line: only inside the commands that start a local stack (ssedge up, the demo)
    for path in (ROOT / "relay" / "cli").rglob("*.py"):
        brought = {part(n) for n in _module_level(path)}
        assert not brought & set(NOT_SHIPPED_TO_PRODUCTION), path


def test_the_harness_imports_no_local_stack() -> None:
    """The tests' and benchmarks' processes are their own: not ``ssedge up``'s."""
    assert "devstack" not in graph()["harness"]


def test_every_folder_of_code_is_a_package() -> None:
    """Each folder of modules says what it holds in its ``__init__.py``; none is shipped (or
    type-checked, or placed in the layers) only through namespace discovery."""
    for folder in ("relay", "replay", "loadtests"):
        for path in (ROOT / folder).rglob("*.py"):
            assert (path.parent / "__init__.py").is_file(), path.parent
