"""The edge proxy's numbers for the dashboard: what HAProxy's ``show stat`` says of the
streams it carries, per relay, in one snapshot part (``edge.proxy``).

Plain functions of the CSV rows (``relay.edge.haproxy.admin.Admin.stat``), tested without a
process.
HAProxy's counters are totals since it started; the dashboard shows them as they are.
"""

from __future__ import annotations

from typing import Any

from relay.edge.haproxy.limits import REFUSALS

#: the backend that carries the streams (haproxy.cfg beside this module)
STREAMS_BACKEND = "relays"
FRONTEND = "edge"
#: each refusal's backend (limits.REFUSALS): its sessions are that refusal's count
_REFUSED = {r.backend: r.backend.removeprefix("refuse_") for r in REFUSALS}


def _int(row: dict[str, str], key: str) -> int:
    value = row.get(key) or "0"
    return int(value) if value.isdigit() else 0


def proxy_snapshot(rows: list[dict[str, str]]) -> dict[str, Any]:
    """Streams open through the edge, its client connections, and per relay: state, streams,
    retries and redispatches (a relay that refused or failed a stream), connection errors;
    and the requests the edge refused itself, by reason (``refused``: stream_limit, …)."""
    out: dict[str, Any] = {"streams": 0, "connections": 0, "requests": 0, "relays": [],
                           "refused": {}}
    for row in rows:
        proxy, name = row.get("pxname"), row.get("svname")
        if proxy in _REFUSED and name == "BACKEND":
            out["refused"][_REFUSED[proxy]] = _int(row, "stot")
        elif proxy == FRONTEND and name == "FRONTEND":
            out["connections"] = _int(row, "scur")
            out["requests"] = _int(row, "req_tot")
        elif proxy == STREAMS_BACKEND and name == "BACKEND":
            out["streams"] = _int(row, "scur")
            out["retries"] = _int(row, "wretr")
            out["redispatches"] = _int(row, "wredis")
        elif proxy == STREAMS_BACKEND and name:
            out["relays"].append({
                "name": name, "status": row.get("status", ""), "streams": _int(row, "scur"),
                "streams_total": _int(row, "stot"), "retries": _int(row, "wretr"),
                "redispatches": _int(row, "wredis"),
                "errors": _int(row, "econ") + _int(row, "eresp"),
            })
    return out
