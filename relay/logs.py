"""The one logging set-up of every ssedge process (relay and replay workers, Granian's own
lines, ingest, stats), as text or one JSON object per line, and the access log.

The access log is a line per HTTP request, written when the answer is done (for an event
stream, when it ends): method, path, status, seconds, client. Never the query string, where
a reader's ``access_token`` travels, and no header: a line never holds a token.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
ACCESS = "ssedge.access"
#: the record attributes a JSON line names (``extra=`` adds its own, the access log's fields)
_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, pid, the
    exception's traceback as one string, and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else logging.Formatter(FORMAT)


def setup(level: str = "info", fmt: str = "text") -> None:
    """Every record of the process to stderr at ``level`` and up, as ``fmt`` (text, json)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # httpx writes every request's URL at info, query string and all (an upstream's may hold
    # a key): its warnings only
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


def granian_config(fmt: str) -> dict[str, Any]:
    """Granian's ``log_dictconfig``: its own lines (master and workers) in the same format,
    to stderr like the rest."""
    factory = "relay.logs.JsonFormatter" if fmt == "json" else "logging.Formatter"
    config: dict[str, Any] = {"()": factory}
    if fmt != "json":
        config["fmt"] = FORMAT
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"generic": config},
        "handlers": {"console": {"formatter": "generic", "class": "logging.StreamHandler",
                                 "stream": "ext://sys.stderr"}},
        "loggers": {"_granian": {"handlers": ["console"], "propagate": False}},
    }


def access(method: str, path: str, status: int, seconds: float, client: str) -> None:
    """One request's line (``relay.web.http.answer`` calls it when the answer is done)."""
    # a decoded path may hold line breaks or quotes: escaped, so no line can be forged
    path = json.dumps(path, ensure_ascii=False)[1:-1]
    logging.getLogger(ACCESS).info(
        "%s %s %d %.3fs %s", method, path, status, seconds, client,
        extra={"method": method, "path": path, "status": status,
               "duration_s": round(seconds, 6), "client": client})
