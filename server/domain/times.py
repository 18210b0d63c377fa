"""The range of a ``google.protobuf.Timestamp``: from 0001-01-01 to 9999-12-31, nanos in
[0, 999,999,999]. A time from a caller is checked against it before it is used."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

#: 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z.
MIN_SECONDS = -62_135_596_800
MAX_SECONDS = 253_402_300_799
TIME_PROBLEM = "a time from year 1 to 9999, nanos 0 to 999,999,999"


def time_problem(stamp: timestamp_pb2.Timestamp) -> str:
    """What is wrong with the timestamp ("" when nothing)."""
    if not MIN_SECONDS <= stamp.seconds <= MAX_SECONDS or not 0 <= stamp.nanos <= 999_999_999:
        return TIME_PROBLEM
    return ""
