"""Builds event envelopes with a fresh event id."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from chat.v1 import events_pb2

SCHEMA_VERSION = 1


def envelope(
    *, tenant_id: str, conversation_id: str, actor_id: str, now: dt.datetime, **payload: Any
) -> events_pb2.EventEnvelope:
    """An envelope with exactly one payload, e.g. ``message_received=MessageReceived(...)``."""
    result = events_pb2.EventEnvelope(
        event_id=uuid.uuid4().hex,
        tenant_id=tenant_id,
        schema_version=SCHEMA_VERSION,
        conversation_id=conversation_id,
        actor_id=actor_id,
        **payload,
    )
    result.occur_time.FromDatetime(now)
    return result
