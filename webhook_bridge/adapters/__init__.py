"""One module per platform: the native webhook body in, normalized InboundEvents out.

Adapters never raise on content they do not know: they report it as ignored (acknowledged,
logged and counted by the app), so a new platform event type never becomes a 5xx. Values of
the wrong type count as absent: a string where an object is expected, null, a list where a
string is. A time that is no time (too large, NaN, not a number) leaves the event's time unset.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import timestamp_pb2

from chat.v1 import ingest_service_pb2

#: A UTF-16 surrogate in a decoded JSON string is always a lone one (JSON's ``\ud83d\ude00``
#: pairs decode to one character), and protobuf refuses to encode it.
_SURROGATE = re.compile("[\ud800-\udfff]")


#: Parts (text, files, attachments) of one platform message, each forwarded as an event that
#: carries the message's ids and sender: Slack allows 10 files a message. A message of more
#: parts is no platform's, and would multiply a small body into thousands of events.
MAX_PARTS = 20
#: A display name shared by every event of its sender in a batch (WhatsApp's contacts).
MAX_NAME_CHARS = 256


@dataclass(slots=True)
class Parsed:
    """What a webhook body held."""

    events: list[ingest_service_pb2.InboundEvent] = field(default_factory=list)
    #: Kinds of entries that were acknowledged without effect ("reaction", "echo", ...).
    ignored: list[str] = field(default_factory=list)
    #: Entries dropped because the bridge could not use them ("message:ValueError", ...).
    rejected: list[str] = field(default_factory=list)


class MalformedPayloadError(ValueError):
    """The body is JSON but not the platform's shape (acknowledged and counted as rejected)."""


@contextlib.contextmanager
def entry(parsed: Parsed, kind: str) -> Iterator[Parsed]:
    """Parse one entry of a batch apart from the others: its events join ``parsed`` only when
    the whole entry could be used, so a bad entry is dropped whole (and reported as rejected)
    while the rest of the batch goes on."""
    own = Parsed()
    try:
        yield own
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # Values the adapters' own checks let through: never a 5xx for a signed body.
        parsed.rejected.append(f"{kind}:{type(exc).__name__}")
        return
    parsed.events += own.events
    parsed.ignored += own.ignored
    parsed.rejected += own.rejected


def stamp(seconds: float) -> timestamp_pb2.Timestamp:
    """A protobuf timestamp from seconds since the epoch."""
    result = timestamp_pb2.Timestamp()
    result.FromDatetime(dt.datetime.fromtimestamp(seconds, dt.UTC))
    return result


def text(value: object, limit: int = 4096 * 4) -> str:
    """A string field of a payload, or "" (never None, never a non-string); a lone surrogate
    becomes U+FFFD, as a decoder does with any other broken character."""
    if not isinstance(value, str):
        return ""
    value = value[:limit]
    return value if value.isascii() else _SURROGATE.sub("\ufffd", value)


def _number(value: object) -> float | None:
    """A JSON number or numeric string (Slack's "1355517523.000005") as a float; None when it
    is none (booleans included) or too large for a float (an integer of 400 digits)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return float(value)
    except (ValueError, OverflowError):
        return None


def time_of(value: object, per_second: int = 1) -> timestamp_pb2.Timestamp | None:
    """A platform time (``per_second`` units a second: 1000 for milliseconds) as a protobuf
    timestamp; None when it is no number, or no time (NaN, infinite, past the year 9999)."""
    seconds = _number(value)
    if seconds is None:
        return None
    try:
        return stamp(seconds / per_second)
    except (ValueError, OverflowError, OSError):
        return None


def set_time(event: ingest_service_pb2.InboundEvent, value: object, per_second: int = 1) -> None:
    """Stamp the event with a platform time (left unset when it is none, see time_of)."""
    when = time_of(value, per_second)
    if when is not None:
        event.event_time.CopyFrom(when)


def token(value: object) -> str:
    """A scalar as part of an id: a string (as text() makes it) or a number; "" otherwise."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return text(value, 256)


def as_list(value: object) -> list[dict[str, Any]]:
    """The objects of a JSON array ([] for anything else)."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def as_dict(value: object) -> dict[str, Any]:
    """A JSON object ({} for anything else)."""
    return value if isinstance(value, dict) else {}


def number(value: object) -> float:
    """A number field; NaN (refused by the server with a field violation) when it is none."""
    result = _number(value)
    return float("nan") if result is None else result
