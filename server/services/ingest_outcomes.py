"""IngestEvents' results: one per event, with an outcome, and a reason when rejected."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import structlog

from chat.v1 import ingest_service_pb2
from server.domain.errors import DomainError

log = structlog.get_logger("chat.ingest")

Result = ingest_service_pb2.IngestResult
ACCEPTED = ingest_service_pb2.INGEST_OUTCOME_ACCEPTED
DUPLICATE = ingest_service_pb2.INGEST_OUTCOME_DUPLICATE
IGNORED = ingest_service_pb2.INGEST_OUTCOME_IGNORED
DEFERRED = ingest_service_pb2.INGEST_OUTCOME_DEFERRED
REJECTED = ingest_service_pb2.INGEST_OUTCOME_REJECTED
QUEUED = ingest_service_pb2.INGEST_OUTCOME_QUEUED
#: The reason an event is rejected for when applying it failed on a bug of ours (logged).
UNPROCESSABLE = "UNPROCESSABLE_EVENT"
UNPROCESSABLE_MESSAGE = "the server could not apply this event"


def outcome(event: ingest_service_pb2.InboundEvent, outcome: int) -> Result:
    """The event's result: ``outcome``, nothing more."""
    return Result(platform_event_id=event.platform_event_id, outcome=outcome)  # type: ignore[arg-type]


def rejected(event: ingest_service_pb2.InboundEvent, reason: str, message: str) -> Result:
    """The event's result: REJECTED, with the reason and its words."""
    return Result(
        platform_event_id=event.platform_event_id,
        outcome=REJECTED,
        error_reason=reason,
        error_message=message[:500],
    )


def log_bug(
    exc: Exception, events: Sequence[ingest_service_pb2.InboundEvent], tenant_id: str
) -> None:
    """At error level, with the traceback: a bug of ours."""
    log.error(
        "event not applied",
        exc_info=exc,
        tenant_id=tenant_id,
        channel=events[0].channel,
        platform_event_id=events[0].platform_event_id,
        kind=events[0].WhichOneof("kind"),
    )


def raise_unless_a_bug(exc: Exception, is_outage: Callable[[Exception], bool]) -> None:
    """Raise ``exc`` again when it is a store's outage or a deliberate error (DomainError):
    those fail the whole call, so the platform retries it. Anything else is a bug of ours in
    applying one event, which the caller rejects alone."""
    if isinstance(exc, DomainError) or is_outage(exc):
        raise exc
