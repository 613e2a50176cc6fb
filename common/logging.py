"""structlog set-up shared by every process.

Format: ``--log-format`` / ``NARRATOR_LOG_FORMAT`` when given; otherwise readable console
lines for the commands people run (``human=True``: annotate, status, validate, demo, ...),
with colours only on a terminal, and for the roles (worker, writer, enqueue) console lines on
a terminal and JSON lines when stderr is not one (containers, log files).

Level: the given one; otherwise ``warning`` for the commands people run (their own output
says what they do), unless JSON logs were asked for, and ``info`` for the roles.

Event names are snake_case and stable (``embedded_redis_started``): they are an interface
for log searches. Context such as ``run``, ``job`` and ``episode`` is bound with
``structlog.contextvars`` by the code that knows it. Secrets are masked by
:func:`redact_processor` before anything is rendered.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_KEYS = re.compile(r"(password|passwd|api_key|apikey|token|secret|authorization)", re.I)
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@\s]+)@")


def redact_text(text: str) -> str:
    """Mask the password part of any ``scheme://user:password@host`` URL in ``text``."""
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


def redact_processor(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in list(event_dict.items()):
        if _SECRET_KEYS.search(key) and value is not None and key != "event":
            event_dict[key] = "***"
        elif isinstance(value, str):
            event_dict[key] = redact_text(value)
    return event_dict


def _stderr_logger(*_args: Any) -> structlog.PrintLogger:
    # Looked up per call (loggers are not cached), so a replaced sys.stderr is honoured.
    return structlog.PrintLogger(file=sys.stderr)


def configure_logging(level: str = "", fmt: str | None = None, *, human: bool = False) -> None:
    """Configure structlog (and the stdlib root logger it renders through) once per process."""
    fmt = fmt or os.environ.get("NARRATOR_LOG_FORMAT")
    level = level or ("warning" if human and fmt != "json" else "info")
    fmt = fmt or ("console" if human or sys.stderr.isatty() else "json")
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
