"""Time ranges in requests, checked at the edge: an end out of the Timestamp's range
(server/domain/times.py) is INVALID_ARGUMENT naming the field, never a crash further in."""

from __future__ import annotations

import datetime as dt

from chat.v1 import common_pb2
from server.domain.errors import FieldViolation, InvalidArgument
from server.domain.times import time_problem


def range_violations(window: common_pb2.TimeRange, field: str) -> list[FieldViolation]:
    """The range's invalid ends, as violations of ``field``.start_time / .end_time."""
    return [
        FieldViolation(f"{field}.{end}", problem)
        for end in ("start_time", "end_time")
        if window.HasField(end) and (problem := time_problem(getattr(window, end)))
    ]


def checked_range(
    window: common_pb2.TimeRange, field: str
) -> tuple[dt.datetime | None, dt.datetime | None]:
    """The range's ends as UTC datetimes (None when unset); INVALID_ARGUMENT when either is out
    of range."""
    if violations := range_violations(window, field):
        raise InvalidArgument("the request is invalid", field_violations=violations)
    start = window.start_time.ToDatetime(tzinfo=dt.UTC) if window.HasField("start_time") else None
    end = window.end_time.ToDatetime(tzinfo=dt.UTC) if window.HasField("end_time") else None
    return start, end
