"""Structured logging (structlog): JSON lines in production, readable lines in development.

ID numbers and phone numbers are masked in every event (``smartmed.crypto.masking``).
"""

from __future__ import annotations

import logging

import structlog

from smartmed.config import Settings
from smartmed.crypto.masking import mask_processor


def configure_logging(settings: Settings) -> None:
    """Set up structlog and the standard library's logging once per process."""
    level = logging.getLevelName(settings.log_level.upper())
    logging.basicConfig(level=level, format="%(message)s")
    renderer = (
        structlog.processors.JSONRenderer()
        if settings.log_json
        else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            mask_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
