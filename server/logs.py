"""The server's log lines: text or JSON (`--log-format`), each with a timestamp, its level and, while
a request is being served, that request's id; the outcome of each request in its access line.

A request's `RequestRecord` lives in a context variable set by the guard (server/guard.py). Tasks
started for the request copy the context, so an error met anywhere in its handling, a stream's
included, lands in the one record the access line reads when the response is over.
"""

from __future__ import annotations

import json
import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Loggers that configure their own handlers; theirs are replaced so every line has one format.
_OWN_HANDLERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


@dataclass
class RequestRecord:
    """How one request went, for its access line: `outcome` is ok, error (a refusal or a failure,
    `error` saying which), client_left or drained (a response cut off)."""

    request_id: str
    outcome: str = "ok"
    error: str | None = None


_current: ContextVar[RequestRecord | None] = ContextVar("monovl_request", default=None)


def begin_request(request_id: str) -> RequestRecord:
    record = RequestRecord(request_id)
    _current.set(record)
    return record


def request_failed(code: str | None, message: str) -> None:
    """The request being served was refused or failed: its access line says so, and why."""
    record = _current.get()
    if record is not None:
        record.outcome = "error"
        record.error = f"{code}: {message}" if code else message


def request_cut(outcome: str) -> None:
    """The request's response was cut off: `client_left` or `drained`."""
    record = _current.get()
    if record is not None:
        record.outcome = outcome


class _RequestId(logging.Filter):
    """Puts the id of the request being served (if any) on each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            current = _current.get()
            record.request_id = current.request_id if current is not None else None
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        return line if request_id is None or "request_id=" in line else f"{line} request_id={request_id}"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, the request's id, and
    the fields a line adds with `extra` (the access line's method, path, status, outcome...)."""

    _STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "request_id"}

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        line.update({k: v for k, v in record.__dict__.items() if k not in self._STANDARD and not k.startswith("_")})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(level: str, log_format: str) -> None:
    """Every line of this process, uvicorn's too, in `log_format` at `level` and above, on stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(_RequestId())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in _OWN_HANDLERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
