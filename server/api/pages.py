"""Page sizes and opaque page tokens (cursors, never offsets).

A token is base64url JSON naming what it continues (the query) and where (the cursor). A token
used for another query, or tampered with, is INVALID_ARGUMENT; it can never reach another
tenant's data because every query is scoped by the caller's tenant anyway.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from typing import Any

from server.domain.errors import FieldViolation, InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MAX_TOKEN_CHARS = 2048


def page_size(requested: int) -> int:
    """0 -> the default; above the cap -> the cap; negative -> INVALID_ARGUMENT."""
    if requested < 0:
        raise InvalidArgument(
            "page_size is negative",
            field_violations=[FieldViolation("page_size", "must be 0 or more")],
        )
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_token(query: dict[str, Any], cursor: dict[str, Any]) -> str:
    """A token continuing ``query`` after ``cursor``."""
    raw = json.dumps({"q": query, "c": cursor}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_token(token: str, query: dict[str, Any]) -> dict[str, Any] | None:
    """The cursor of ``token`` (None for an empty token); it must have been issued for ``query``."""
    if not token:
        return None
    if len(token) > MAX_TOKEN_CHARS:
        raise _invalid_token()
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        data = None
    # Round-trip the query through JSON so it compares like the decoded one.
    if (
        not isinstance(data, dict)
        or data.get("q") != json.loads(json.dumps(query))
        or not isinstance(data.get("c"), dict)
    ):
        raise _invalid_token()
    cursor: dict[str, Any] = data["c"]
    return cursor


def encode_time_cursor(query: dict[str, Any], moment: dt.datetime, record_id: str) -> str:
    """A token continuing ``query`` after the record at (``moment``, ``record_id``), the
    order of pages sorted newest first."""
    return encode_token(query, {"t": moment.isoformat(), "id": record_id})


def decode_time_cursor(token: str, query: dict[str, Any]) -> tuple[dt.datetime, str] | None:
    """The (time, id) position a token of encode_time_cursor continues after (None for an
    empty token)."""
    cursor = decode_token(token, query)
    if cursor is None:
        return None
    try:
        return dt.datetime.fromisoformat(str(cursor["t"])), str(cursor["id"])
    except (KeyError, TypeError, ValueError):
        raise _invalid_token() from None


def cursor_int(cursor: dict[str, Any], key: str) -> int:
    """An integer field of a cursor (tokens are client-held: check their contents)."""
    value = cursor.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**62:
        raise _invalid_token()
    return value


def _invalid_token() -> InvalidArgument:
    return InvalidArgument(
        "page_token is invalid",
        field_violations=[FieldViolation("page_token", "not a token issued for this request")],
    )
