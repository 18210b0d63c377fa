"""Users: one record per tenant and platform identity (channel + user id), created on first
contact, with the time of their last activity."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from pymongo import UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from server.repositories.mongo import USERS, Document


@dataclass(frozen=True, slots=True)
class Activity:
    """A user's message, for record_activity_many."""

    tenant_id: str
    channel: int
    user_id: str
    now: dt.datetime


class MongoUserRepository:
    """Users of every tenant, each write scoped to one."""

    def __init__(self, *, database: AsyncDatabase[Document]) -> None:
        self._collection = database[USERS]

    async def record_activity_many(
        self, activities: Sequence[Activity], *, session: AsyncClientSession
    ) -> None:
        """record_activity for several users in one round trip."""
        await self._collection.bulk_write(
            [
                UpdateOne(
                    {"tenant_id": a.tenant_id, "channel": a.channel, "user_id": a.user_id},
                    {
                        "$setOnInsert": {"first_seen_time": a.now},
                        "$max": {"last_active_time": a.now},
                        "$inc": {"message_count": 1},
                    },
                    upsert=True,
                )
                for a in activities
            ],
            ordered=False,
            session=session,
        )

    async def record_activity(
        self,
        tenant_id: str,
        *,
        channel: int,
        user_id: str,
        now: dt.datetime,
        session: AsyncClientSession,
    ) -> None:
        """Create the user on first contact; move last_active_time forward (never back)."""
        await self._collection.update_one(
            {"tenant_id": tenant_id, "channel": channel, "user_id": user_id},
            {
                "$setOnInsert": {"first_seen_time": now},
                "$max": {"last_active_time": now},
                "$inc": {"message_count": 1},
            },
            upsert=True,
            session=session,
        )
