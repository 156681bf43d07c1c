"""The operator commands: ``ssedge top``, ``revoke``, ``disconnect``, ``drain``, each a call of
the operator API (``/v1/admin/`` on a relay's own port: ``--url`` or ``SSEDGE_ADMIN_URL``,
with ``SSEDGE_ADMIN_TOKEN``). Any relay answers for the whole deployment, but ``drain``,
which drains the node it is sent to (``--node``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from relay import duration
from relay.web import client, client_settings
from relay.web.client_settings import DEFAULT_ADMIN_URL

_CLEAR = "\x1b[H\x1b[2J"


def add_arguments(sub: Any) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", help="a relay's own base URL (not the edge) "
                       f"[SSEDGE_ADMIN_URL, default {DEFAULT_ADMIN_URL}]")
        p.add_argument("--admin-token", help="the operator API's token [SSEDGE_ADMIN_TOKEN]")

    top = sub.add_parser("top", help="the busiest topics: open streams across every relay, "
                         "refreshed every 2 s")
    common(top)
    top.add_argument("--limit", type=int, default=20, help="topics shown (20)")
    top.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (2)")
    top.add_argument("--once", action="store_true", help="print once and exit (for scripts)")
    top.add_argument("--json", action="store_true", help="the API's JSON answer, one a line")
    top.set_defaults(func=cmd_top)

    rev = sub.add_parser("revoke", help="refuse a token (by jti) or every token of a subject "
                         "until a time; their open streams end on every relay")
    common(rev)
    who = rev.add_mutually_exclusive_group(required=True)
    who.add_argument("--jti", help="the token's jti claim")
    who.add_argument("--sub", help="the subject (sub claim): every token of it")
    who.add_argument("--list", action="store_true", help="list the revocations in force")
    who.add_argument("--lift-jti", metavar="JTI", help="lift the revocation of a jti")
    who.add_argument("--lift-sub", metavar="SUB", help="lift the revocation of a subject")
    until = rev.add_mutually_exclusive_group()
    until.add_argument("--until", type=float, help="until this time (epoch seconds)")
    until.add_argument("--for", dest="span", default="24h",
                       help="for this long (90s, 10m, 24h: the default; cover the tokens' "
                            "lifetime)")
    rev.add_argument("--reason", default="", help="told to the streams it ends, and kept")
    rev.set_defaults(func=cmd_revoke)

    dis = sub.add_parser("disconnect", help="end every stream of a topic or of a subject now, "
                         "on every relay (they reconnect as their token allows)")
    common(dis)
    which = dis.add_mutually_exclusive_group(required=True)
    which.add_argument("--topic")
    which.add_argument("--sub", help="the subject (sub claim) of the streams' tokens")
    dis.set_defaults(func=cmd_disconnect)

    dr = sub.add_parser("drain", help="drain a relay node and stop it, as SIGTERM does")
    dr.add_argument("--node", required=True, metavar="URL", help="the node's own base URL")
    dr.add_argument("--admin-token", help="the operator API's token [SSEDGE_ADMIN_TOKEN]")
    dr.set_defaults(func=cmd_drain)


async def _call(method: str, url: str, token: str, body: Any = None) -> client.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await client.request(method, url, headers=headers, json_body=body, timeout=10.0)


def _run(method: str, base: str, path: str, token: str, body: Any = None,
         command: str = "ssedge") -> tuple[int, Any]:
    url = base + path
    try:
        response = asyncio.run(_call(method, url, token, body))
    except (OSError, EOFError, TimeoutError, client.ProtocolError) as exc:
        print(f"{command}: {url}: {exc or type(exc).__name__}", file=sys.stderr)
        return 1, None
    if response.status >= 300:
        hint = {401: " (set SSEDGE_ADMIN_TOKEN or --admin-token)",
                404: " (the operator API is off on a relay without SSEDGE_ADMIN_TOKEN, and "
                     "the edge never serves it: give a relay's own URL)"}.get(response.status, "")
        print(f"{command}: {response.status} {response.body.decode(errors='replace')}{hint}",
              file=sys.stderr)
        return 1, None
    return 0, response.json()


def _printed(status: int, answer: Any) -> int:
    """A one-shot command's answer on stdout, as JSON when it succeeded; its exit status."""
    if not status:
        print(json.dumps(answer))
    return status


def render(answer: dict[str, Any]) -> str:
    when = time.strftime("%H:%M:%S", time.localtime(answer.get("at", time.time())))
    lines = [f"{answer['streams']} streams on {answer['topic_count']} topics, "
             f"{answer['processes']} relay processes  ({when}, "
             f"counts at most {answer['period_s']:g} s old)",
             "", f"{'STREAMS':>9}  TOPIC"]
    lines += [f"{row['audience']:>9}  {row['topic']}" for row in answer["topics"]]
    return "\n".join(lines)


def cmd_top(args: argparse.Namespace) -> int:
    base = client_settings.admin_url(args.url)
    token = client_settings.admin_token(args.admin_token)
    path = f"/v1/admin/audience?limit={max(1, args.limit)}"
    try:
        while True:
            status, answer = _run("GET", base, path, token, command="ssedge top")
            if status:
                return status
            if args.json:
                print(json.dumps(answer), flush=True)
            else:
                clear = _CLEAR if sys.stdout.isatty() and not args.once else ""
                print(clear + render(answer), flush=True)
            if args.once:
                return 0
            time.sleep(max(0.2, args.interval))
    except KeyboardInterrupt:
        return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    base = client_settings.admin_url(args.url)
    token = client_settings.admin_token(args.admin_token)
    if args.list:
        status, answer = _run("GET", base, "/v1/admin/revocations", token,
                              command="ssedge revoke")
    elif args.lift_jti or args.lift_sub:
        query = f"jti={args.lift_jti}" if args.lift_jti else f"sub={args.lift_sub}"
        status, answer = _run("DELETE", base, f"/v1/admin/revocations?{query}", token,
                              command="ssedge revoke")
    else:
        until = args.until
        if until is None:
            try:
                until = time.time() + duration.seconds(args.span)
            except ValueError as exc:
                print(f"ssedge revoke: --for: {exc}", file=sys.stderr)
                return 2
        body: dict[str, Any] = {"until": until, "reason": args.reason}
        body["jti" if args.jti else "sub"] = args.jti or args.sub
        status, answer = _run("POST", base, "/v1/admin/revocations", token, body,
                              command="ssedge revoke")
    return _printed(status, answer)


def cmd_disconnect(args: argparse.Namespace) -> int:
    base = client_settings.admin_url(args.url)
    token = client_settings.admin_token(args.admin_token)
    body = {"topic": args.topic} if args.topic else {"sub": args.sub}
    status, answer = _run("POST", base, "/v1/admin/disconnect", token, body,
                          command="ssedge disconnect")
    return _printed(status, answer)


def cmd_drain(args: argparse.Namespace) -> int:
    token = client_settings.admin_token(args.admin_token)
    status, answer = _run("POST", args.node.rstrip("/"), "/v1/admin/drain", token,
                          command="ssedge drain")
    return _printed(status, answer)
