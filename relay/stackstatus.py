"""A local stack's ``supervisor.json``: what ``ssedge up``'s supervisor says of its children
(pid, port, state, restarts, last exit of each). The supervisor writes it
(``relay.devstack.supervisor``); the dashboard's collector shows it and ``ssedge drill`` finds
the processes it injects faults into there. Its name and its reader live here, below all three,
so that neither reader imports the stack.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STATUS_FILE = "supervisor.json"


def read_status(path: Path) -> dict[str, Any] | None:
    """A stack's ``supervisor.json``, or None when there is none (or it is not JSON)."""
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None
