"""Every store a chat-server process uses, over its MongoDB database and its Redis client.

One place that knows the concrete classes: the composition root (server/bootstrap.py) asks for
the stores and hands each service the ports it needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure, ExecutionTimeout, PyMongoError, WTimeoutError

from server.domain.errors import StoreError
from server.repositories.analytics import MongoAnalytics
from server.repositories.audit import MongoAuditLog
from server.repositories.conversation_cache import RedisConversationCache
from server.repositories.conversations import MongoConversationRepository
from server.repositories.deliveries import MongoDeliveries
from server.repositories.idempotency import MongoIdempotencyStore
from server.repositories.ingest import MongoIngestInbox, MongoIngestLog, MongoReplyJobs
from server.repositories.live import LiveHub, RedisLiveEvents
from server.repositories.media import GridFsMediaStore
from server.repositories.messages import MongoMessageRepository
from server.repositories.mongo import Transactions
from server.repositories.outbox import MongoOutbox
from server.repositories.rate_limits import RedisRateLimiter
from server.repositories.receipts import MongoEarlyReceipts
from server.repositories.redis_client import RedisClient
from server.repositories.secrets import SecretBox
from server.repositories.sessions import RedisSessionStore
from server.repositories.tenants import MongoTenantStore


@dataclass(frozen=True, slots=True)
class Stores:
    """MongoDB for what must last, Redis for what is live or short-lived."""

    transactions: Transactions
    outbox: MongoOutbox
    conversations: MongoConversationRepository
    messages: MongoMessageRepository
    media: GridFsMediaStore
    deliveries: MongoDeliveries
    reply_jobs: MongoReplyJobs
    ingest_log: MongoIngestLog
    ingest_inbox: MongoIngestInbox
    early_receipts: MongoEarlyReceipts
    idempotency: MongoIdempotencyStore
    tenants: MongoTenantStore
    analytics: MongoAnalytics
    audit: MongoAuditLog
    sessions: RedisSessionStore
    limiter: RedisRateLimiter
    hub: LiveHub
    cache: RedisConversationCache
    live: RedisLiveEvents


def open_stores(
    *,
    mongo: AsyncMongoClient[dict[str, Any]],
    database: AsyncDatabase[dict[str, Any]],
    client: RedisClient,
    secrets: SecretBox | None,
    session_ttl_seconds: int,
    stream_queue_limit: int,
) -> Stores:
    """The stores; none of them talks to its server before it is used."""
    sessions = RedisSessionStore(client=client, ttl_seconds=session_ttl_seconds)
    cache = RedisConversationCache(client=client)
    return Stores(
        transactions=Transactions(client=mongo),
        outbox=MongoOutbox(database=database),
        conversations=MongoConversationRepository(database=database),
        messages=MongoMessageRepository(database=database),
        media=GridFsMediaStore(database=database),
        deliveries=MongoDeliveries(database=database),
        reply_jobs=MongoReplyJobs(database=database),
        ingest_log=MongoIngestLog(database=database),
        ingest_inbox=MongoIngestInbox(database=database),
        early_receipts=MongoEarlyReceipts(database=database),
        idempotency=MongoIdempotencyStore(database=database),
        tenants=MongoTenantStore(database=database, secrets=secrets),
        analytics=MongoAnalytics(database=database),
        audit=MongoAuditLog(database=database),
        sessions=sessions,
        limiter=RedisRateLimiter(client=client),
        hub=LiveHub(client=client, queue_limit=stream_queue_limit),
        cache=cache,
        live=RedisLiveEvents(client=client, cache=cache, sessions=sessions),
    )


def is_outage(exc: Exception) -> bool:
    """Whether ``exc`` says a store could not do its part (MongoDB unreachable, timed out or
    between primaries; Redis failing) rather than something being wrong with what was asked of
    it. The error boundary answers these UNAVAILABLE, which a caller retries."""
    if isinstance(exc, ConnectionFailure | ExecutionTimeout | WTimeoutError | StoreError):
        return True
    return isinstance(exc, PyMongoError) and any(
        exc.has_error_label(label) for label in ("TransientTransactionError", "RetryableWriteError")
    )
