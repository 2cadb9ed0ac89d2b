"""Lifecycle events through structlog, never configured by the library.

When the application configured structlog, events go through its own
processors (``structlog.get_logger("procflow")``). When it did not, structlog's
default would print on *stdout*; procflow must never write there, so the event
is rendered as one line and handed to the standard-library logger
``procflow`` instead: an application that configured nothing sees warnings
only, on stderr (logging's last-resort handler).
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

__all__ = ["emit", "stdlib_logger"]

stdlib_logger = logging.getLogger("procflow")

DEBUG = logging.DEBUG
WARNING = logging.WARNING

#: Events at debug level; every other event is a warning.
_DEBUG_EVENTS = frozenset({"proc.spawn", "proc.exit"})


def _render(event: str, fields: dict[str, Any]) -> str:
    parts = [event]
    for key, value in fields.items():
        parts.append(f"{key}={value!r}")
    return " ".join(parts)


def _structlog_configured() -> bool:
    """True when the application set structlog up: events then go through its processors.

    ``is_configured()`` alone is not enough: ``structlog.testing.capture_logs()``
    (and a bare ``configure()``) leave structlog "configured" with its built-in
    processors and logger factory, whose ConsoleRenderer prints on stdout, where
    procflow must never write. That state counts as not configured.
    """
    if not structlog.is_configured():
        return False
    builtin = getattr(structlog, "_config", None)
    default_processors = getattr(builtin, "_BUILTIN_DEFAULT_PROCESSORS", None)
    default_factory = getattr(builtin, "_BUILTIN_DEFAULT_LOGGER_FACTORY", None)
    if default_processors is None or default_factory is None:
        return True  # a structlog without these internals: trust is_configured()
    config = structlog.get_config()
    processors = config["processors"]
    return not (
        config["logger_factory"] is default_factory
        and len(processors) == len(default_processors)
        and all(a is b for a, b in zip(processors, default_processors, strict=True))
    )


def emit(event: str, **fields: Any) -> None:
    """Log one procflow event (level chosen by its name)."""
    level = DEBUG if event in _DEBUG_EVENTS else WARNING
    if _structlog_configured():
        logger = structlog.get_logger("procflow")
        try:
            if level == DEBUG:
                logger.debug(event, **fields)
            else:
                logger.warning(event, **fields)
        except Exception:
            stdlib_logger.exception("procflow could not log %s", event)
        return
    if stdlib_logger.isEnabledFor(level):
        stdlib_logger.log(level, _render(event, fields))
