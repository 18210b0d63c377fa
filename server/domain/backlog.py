"""What waits in a queue kept in MongoDB: how many items, and since when the oldest."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

#: The queues sampled, as they are named in the metrics' ``queue`` label.
OUTBOX = "outbox"
REPLY = "reply"
DELIVERY = "delivery"
INBOX = "inbox"


@dataclass(frozen=True, slots=True)
class Backlog:
    """One queue at one moment: ``items`` waiting, the oldest written at ``oldest`` (None
    when the queue is empty)."""

    queue: str
    items: int
    oldest: dt.datetime | None
