"""When a session is live."""

from __future__ import annotations

import datetime as dt

from chat.v1 import common_pb2


def is_live(session: common_pb2.Session, now: dt.datetime) -> bool:
    """Active and not past its expiry time."""
    return (
        session.status == common_pb2.SESSION_STATUS_ACTIVE
        and session.expire_time.ToDatetime(tzinfo=dt.UTC) > now
    )
