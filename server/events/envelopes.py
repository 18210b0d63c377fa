"""Builds event envelopes with a fresh event id."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from chat.v1 import events_pb2

SCHEMA_VERSION = 1


def envelope(
    *,
    tenant_id: str,
    conversation_id: str,
    actor_id: str,
    now: dt.datetime,
    event_id: str = "",
    **payload: Any,
) -> events_pb2.EventEnvelope:
    """An envelope with exactly one payload, e.g. ``message_received=MessageReceived(...)``;
    a random event id unless one is given."""
    result = events_pb2.EventEnvelope(
        event_id=event_id or uuid.uuid4().hex,
        tenant_id=tenant_id,
        schema_version=SCHEMA_VERSION,
        conversation_id=conversation_id,
        actor_id=actor_id,
        **payload,
    )
    result.occur_time.FromDatetime(now)
    return result


def stable_event_id(*parts: str) -> str:
    """An event id derived from what the event is about: writing the same event twice (a
    retry, two racing calls) yields one outbox record, hence one event."""
    return uuid.uuid5(_NAMESPACE, ":".join(parts)).hex


_NAMESPACE = uuid.UUID("5d1f3c1e-7b0a-4b8e-9a57-3c6f4e2d9b10")
