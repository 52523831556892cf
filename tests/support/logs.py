"""A service's log as it writes it (JSON lines), captured from one logger in-process."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from typing import Any

from mosaic.logs import JsonFormatter


class JsonLines(logging.Handler):
    """Every record, formatted by the service's JsonFormatter and parsed back."""

    def __init__(self, service: str = "federation-gateway") -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter(service))
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))

    def at(self, level: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line["level"] == level]


@contextlib.contextmanager
def captured(logger_name: str, level: int | None = None) -> Iterator[JsonLines]:
    """Capture ``logger_name``'s records (at ``level``, when given, restored after)."""
    handler = JsonLines()
    logger = logging.getLogger(logger_name)
    old_level = logger.level
    logger.addHandler(handler)
    if level is not None:
        logger.setLevel(level)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
