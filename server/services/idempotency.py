"""The idempotency recipe, written once.

A mutating request may carry a ``request_id``. Its first completion stores the response under
(tenant, operation, request id) in the same transaction as its effects; a retry is answered
from that record. Of two racing retries exactly one commits: the other's transaction fails on
the record's unique key (AlreadyExists) and it answers with what the first stored.

The record keeps a fingerprint of the request (a hash of its deterministic encoding): the same
request id with a different request is refused with IDEMPOTENCY_KEY_REUSED rather than
answered with another request's response, as a client reusing its keys by mistake would
otherwise never learn that its second request did nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from server.domain.errors import AlreadyExists, FailedPrecondition
from server.domain.idempotency import RecordedResponse
from server.services.ports import IdempotencyStore, Tx

KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"


class _Message(Protocol):
    def SerializeToString(self, *, deterministic: bool = ...) -> bytes: ...  # noqa: N802 - protobuf's name


R = TypeVar("R", bound=_Message)


@dataclass(frozen=True, slots=True)
class RequestKey:
    """One request: its tenant, the operation (naming what it acts on when the same request
    id may be used elsewhere), and the caller's request id ("" when it sent none)."""

    tenant_id: str
    operation: str
    request_id: str
    #: The request's fingerprint_of (empty: not compared).
    fingerprint: str = ""


def fingerprint_of(request: _Message) -> str:
    """What identifies a request's content: the SHA-256 of its deterministic encoding."""
    return hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()


class _Identified(_Message, Protocol):
    @property
    def request_id(self) -> str: ...


def idempotency_key(tenant_id: str, operation: str, request: _Identified) -> RequestKey:
    """The key of a request that carries its own ``request_id``, fingerprinted whole."""
    fingerprint = fingerprint_of(request) if request.request_id else ""
    return RequestKey(tenant_id, operation, request.request_id, fingerprint)


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
                return decode(_same_request(key, stored))
        try:
            return await work()
        except AlreadyExists:
            if not key.request_id:
                raise
            stored = await self._store.get(key.tenant_id, key.operation, key.request_id)
            if stored is None:
                raise  # another record's key: not this request's race
            return decode(_same_request(key, stored))

    async def once_then_record(
        self,
        key: RequestKey,
        decode: Callable[[bytes], R],
        work: Callable[[], Awaitable[R]],
        *,
        clock: Callable[[], dt.datetime],
    ) -> R:
        """``once``, for work whose effects are not in a transaction of ours (Redis, or one
        of its own): its response is recorded after it. Only for work that may run twice with
        the same effect, since a crash between the two lets a retry run it again."""

        async def run() -> R:
            response = await work()
            await self.record(key, response, now=clock(), tx=None)
            return response

        return await self.once(key, decode, run)

    async def record(
        self, key: RequestKey, response: _Message, *, now: dt.datetime, tx: Tx | None
    ) -> None:
        """Store the response in the request's transaction (none for a request without an id)."""
        if key.request_id:
            await self._store.put(
                key.tenant_id,
                key.operation,
                key.request_id,
                RecordedResponse(response.SerializeToString(), key.fingerprint),
                now=now,
                tx=tx,
            )


def _same_request(key: RequestKey, stored: RecordedResponse) -> bytes:
    """The stored response, when it answers this very request."""
    if key.fingerprint and stored.fingerprint and key.fingerprint != stored.fingerprint:
        raise FailedPrecondition(
            "request_id was already used for a different request; use a new request_id for a "
            "new request, and the same request to retry",
            reason=KEY_REUSED,
        )
    return stored.response
