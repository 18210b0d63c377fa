"""Leases in MongoDB: at most one holder per name at a time, expiring unless renewed."""

from __future__ import annotations

import datetime as dt
import time

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from server.repositories.mongo import LOCKS, Document


class MongoLease:
    """A named lease; acquire() also renews it for its holder."""

    def __init__(
        self, *, database: AsyncDatabase[Document], name: str, owner: str, ttl: dt.timedelta
    ) -> None:
        self._collection = database[LOCKS]
        self._name = name
        self._owner = owner
        self._ttl = ttl
        self._renewed_at: float | None = None

    async def acquire(self, *, now: dt.datetime) -> bool:
        """Take or renew the lease; False while another owner holds it. A lease renewed less
        than half its ttl ago is still held for at least half its ttl: no round trip then (the
        relay asks before every batch, which would otherwise cost a write each)."""
        if (
            self._renewed_at is not None
            and time.monotonic() - self._renewed_at < self._ttl.total_seconds() / 2
        ):
            return True
        self._renewed_at = None
        renewing = time.monotonic()
        try:
            await self._collection.find_one_and_update(
                {
                    "_id": self._name,
                    "$or": [{"owner": self._owner}, {"expire_time": {"$lt": now}}],
                },
                {"$set": {"owner": self._owner, "expire_time": now + self._ttl}},
                upsert=True,
            )
        except DuplicateKeyError:
            return False  # the filter missed because someone else holds it; the upsert collided
        self._renewed_at = renewing
        return True

    async def release(self) -> None:
        """Give the lease up (if held)."""
        self._renewed_at = None
        await self._collection.delete_one({"_id": self._name, "owner": self._owner})
