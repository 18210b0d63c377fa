"""Stored responses of idempotent requests, keyed by tenant, operation and request id.

The record is written in the same transaction as the request's effects, under a unique index:
of two racing retries, exactly one commits; the other's transaction fails on the index and it
returns the stored response instead.
"""

from __future__ import annotations

import datetime as dt

from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from server.domain.errors import AlreadyExists
from server.domain.idempotency import RecordedResponse
from server.repositories.mongo import IDEMPOTENCY, Document

RETENTION = dt.timedelta(days=1)


class MongoIdempotencyStore:
    """request id -> serialized response."""

    def __init__(self, *, database: AsyncDatabase[Document]) -> None:
        self._collection = database[IDEMPOTENCY]

    async def get(self, tenant_id: str, operation: str, request_id: str) -> RecordedResponse | None:
        """The stored response, if this request already completed."""
        document = await self._collection.find_one(
            {"tenant_id": tenant_id, "operation": operation, "request_id": request_id}
        )
        if document is None:
            return None
        return RecordedResponse(
            response=bytes(document["response"]), fingerprint=document.get("fingerprint", "")
        )

    async def put(
        self,
        tenant_id: str,
        operation: str,
        request_id: str,
        recorded: RecordedResponse,
        *,
        now: dt.datetime,
        tx: AsyncClientSession | None,
    ) -> None:
        """Record the response; AlreadyExists when another call recorded it first."""
        try:
            await self._collection.insert_one(
                {
                    "tenant_id": tenant_id,
                    "operation": operation,
                    "request_id": request_id,
                    "response": recorded.response,
                    "fingerprint": recorded.fingerprint,
                    "expire_time": now + RETENTION,
                },
                session=tx,
            )
        except DuplicateKeyError:
            raise AlreadyExists("the request was recorded before", reason="DUPLICATE_KEY") from None
