"""Users: one record per tenant and platform identity (channel + user id), created on first
contact, with the time of their last activity and their message count. The event worker keeps
them from MessageReceived events, off the request path (server/worker/handlers.py)."""

from __future__ import annotations

import datetime as dt

from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from server.repositories.mongo import USERS, Document


class MongoUserRepository:
    """Users of every tenant, each write scoped to one."""

    def __init__(self, *, database: AsyncDatabase[Document]) -> None:
        self._collection = database[USERS]

    async def record_activity(
        self,
        tenant_id: str,
        *,
        channel: int,
        user_id: str,
        now: dt.datetime,
        tx: AsyncClientSession,
    ) -> None:
        """Create the user on first contact; first_seen_time only moves back and
        last_active_time only forward, so events handled out of order leave the same record."""
        await self._collection.update_one(
            {"tenant_id": tenant_id, "channel": channel, "user_id": user_id},
            {
                "$min": {"first_seen_time": now},
                "$max": {"last_active_time": now},
                "$inc": {"message_count": 1},
            },
            upsert=True,
            session=tx,
        )
