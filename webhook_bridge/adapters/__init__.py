"""One module per platform: the native webhook body in, normalized InboundEvents out.

Adapters never raise on content they do not know: they report it as ignored (acknowledged,
logged and counted by the app), so a new platform event type never becomes a 5xx.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import timestamp_pb2

from chat.v1 import ingest_service_pb2


@dataclass(slots=True)
class Parsed:
    """What a webhook body held."""

    events: list[ingest_service_pb2.InboundEvent] = field(default_factory=list)
    #: Kinds of entries that were acknowledged without effect ("reaction", "echo", ...).
    ignored: list[str] = field(default_factory=list)


class MalformedPayloadError(ValueError):
    """The body is JSON but not the platform's shape (answered 400)."""


def stamp(seconds: float) -> timestamp_pb2.Timestamp:
    """A protobuf timestamp from seconds since the epoch."""
    result = timestamp_pb2.Timestamp()
    result.FromDatetime(dt.datetime.fromtimestamp(seconds, dt.UTC))
    return result


def text(value: object, limit: int = 4096 * 4) -> str:
    """A string field of a payload, or "" (never None, never a non-string)."""
    return value[:limit] if isinstance(value, str) else ""


def set_time(event: ingest_service_pb2.InboundEvent, seconds: object) -> None:
    """Stamp the event with a platform time in seconds (left unset when it is not one)."""
    with contextlib.suppress(TypeError, ValueError, OverflowError, OSError):
        event.event_time.CopyFrom(stamp(float(str(seconds))))


def as_list(value: object) -> list[dict[str, Any]]:
    """The objects of a JSON array ([] for anything else)."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def as_dict(value: object) -> dict[str, Any]:
    """A JSON object ({} for anything else)."""
    return value if isinstance(value, dict) else {}


def number(value: object) -> float:
    """A number field; NaN (refused by the server with a field violation) when it is none."""
    try:
        return float(str(value))
    except ValueError:
        return float("nan")
