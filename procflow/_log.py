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


def emit(event: str, **fields: Any) -> None:
    """Log one procflow event (level chosen by its name)."""
    level = DEBUG if event in _DEBUG_EVENTS else WARNING
    if structlog.is_configured():
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
