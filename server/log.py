"""structlog set-up, done once at process start: JSON in production, console in development.

Request-scoped fields (request id, method, later tenant) are bound with contextvars by the
interceptors, so every line logged while handling a call carries them; with tracing on, the
current trace and span ids too.
"""

from __future__ import annotations

import logging
import sys

import structlog

from server.settings import LogFormat
from server.tracing.spans import add_trace_ids


def configure_logging(*, log_format: LogFormat, level: str) -> None:
    """Configure structlog and the standard library's logging to share one output."""
    use_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        # With tracing on, a line logged inside a span names it (trace_id, span_id).
        add_trace_ids,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            # First: a line below the level (the access line of every call, at "warning") is
            # dropped before the processors below build it, not after, by logging.
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if use_json else _keep,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka logs every failed reconnect at ERROR; the publisher reports the state itself.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))


def _keep(
    _logger: object, _name: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    return event_dict
