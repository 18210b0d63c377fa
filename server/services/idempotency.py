"""The idempotency recipe, written once.

A mutating request may carry a ``request_id``. Its first completion stores the response under
(tenant, operation, request id) in the same transaction as its effects; a retry is answered
from that record. Of two racing retries exactly one commits: the other's transaction fails on
the record's unique key (AlreadyExists) and it answers with what the first stored.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from server.domain.errors import AlreadyExists
from server.services.ports import IdempotencyStore, Tx


class _Message(Protocol):
    def SerializeToString(self) -> bytes: ...  # noqa: N802 - protobuf's name


R = TypeVar("R", bound=_Message)


@dataclass(frozen=True, slots=True)
class RequestKey:
    """One request: its tenant, the operation (naming what it acts on when the same request
    id may be used elsewhere), and the caller's request id ("" when it sent none)."""

    tenant_id: str
    operation: str
    request_id: str


class IdempotentRequests:
    """Runs requests at most once per request id."""

    def __init__(self, *, store: IdempotencyStore) -> None:
        self._store = store

    async def once(
        self,
        key: RequestKey,
        decode: Callable[[bytes], R],
        work: Callable[[], Awaitable[R]],
    ) -> R:
        """The stored response when the request completed before; else ``work``'s, which
        records it with ``record`` in its transaction. A racing retry that committed first
        wins: its response is returned."""
        if key.request_id:
            stored = await self._store.get(key.tenant_id, key.operation, key.request_id)
            if stored is not None:
                return decode(stored)
        try:
            return await work()
        except AlreadyExists:
            if not key.request_id:
                raise
            stored = await self._store.get(key.tenant_id, key.operation, key.request_id)
            if stored is None:
                raise  # another record's key: not this request's race
            return decode(stored)

    async def record(
        self, key: RequestKey, response: _Message, *, now: dt.datetime, tx: Tx | None
    ) -> None:
        """Store the response in the request's transaction (none for a request without an id)."""
        if key.request_id:
            await self._store.put(
                key.tenant_id,
                key.operation,
                key.request_id,
                response.SerializeToString(),
                now=now,
                tx=tx,
            )
