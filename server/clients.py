"""The process's clients: opened once inside the running loop, closed once at the end.

chat-server and chat-worker both start here. Nothing connects at import time, and opening a
client does not need its server to be up yet.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from server.health import Dependency
from server.relay.publisher import KafkaEventPublisher
from server.repositories.mongo import create_indexes
from server.repositories.redis_client import RedisClient, open_redis
from server.repositories.secrets import SecretBox
from server.repositories.tenants import MongoTenantStore
from server.repositories.tenants_file import load_tenants
from server.settings import Settings
from server.tenancy.directory import TenantDirectory

log = structlog.get_logger("chat.server")


@dataclass(slots=True)
class Clients:
    """The process's clients, created once inside the event loop and shared."""

    mongo: AsyncMongoClient[dict[str, Any]]
    database: AsyncDatabase[dict[str, Any]]
    redis: RedisClient
    publisher: KafkaEventPublisher
    http: aiohttp.ClientSession
    tenants: TenantDirectory
    secrets: SecretBox | None

    async def close(self) -> None:
        """Flush the Kafka producer first (it may still hold events), then close the rest;
        one failing close does not keep the others open."""
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(self.http.close)
            stack.push_async_callback(self.mongo.close)
            stack.push_async_callback(self.tenants.close)
            stack.push_async_callback(self.redis.aclose)
            stack.push_async_callback(self.publisher.close)

    def dependencies(self) -> list[Dependency]:
        """What the health monitor checks: MongoDB (with the indexes and the stored tenants)
        and Redis are required to serve; Kafka is not (events wait in the outbox)."""
        indexed = False

        async def ping_mongo() -> None:
            nonlocal indexed
            await self.mongo.admin.command("ping")
            if not indexed:
                # Unique indexes carry invariants (one active conversation per user and channel,
                # idempotency): the server reports NOT_SERVING until they exist.
                await create_indexes(self.database)
                indexed = True
            if not self.tenants.loaded:
                # Until stored tenants are read, their callers would be refused as unknown.
                raise RuntimeError("stored tenants not loaded yet")

        async def ping_redis() -> None:
            await self.redis.ping()

        return [
            Dependency("mongodb", ping_mongo, required=True),
            Dependency("redis", ping_redis, required=True),
            Dependency("kafka", self.publisher.probe, required=False),
        ]


async def open_clients(settings: Settings, *, needs_tenants: bool = True) -> Clients:
    """Open the clients. None of them needs its server to be up yet."""
    file_tenants = load_tenants(settings.tenants_file) if settings.tenants_file else {}
    # The worker (needs_tenants=False) reads no tenant, so it needs no key.
    secrets = (
        SecretBox.from_file(settings.tenant_secrets_key_file)
        if settings.tenant_secrets_key_file and needs_tenants
        else None
    )
    if not file_tenants and secrets is None and needs_tenants:
        log.warning(
            "no tenants configured; set CHAT_TENANTS_FILE, or CHAT_TENANT_SECRETS_KEY_FILE "
            "to create tenants with TenantService"
        )
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongodb_uri, tz_aware=True, appname="chat-server", serverSelectionTimeoutMS=5000
    )
    database = mongo[settings.mongodb_database]
    return Clients(
        mongo=mongo,
        database=database,
        redis=_redis_client(settings),
        publisher=KafkaEventPublisher(bootstrap_servers=settings.kafka_bootstrap),
        # One pooled HTTP client per process, for signing keys and the platforms' APIs; its
        # deadline is a platform send's (a send that times out is retried).
        http=aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=settings.delivery_send_timeout_seconds)
        ),
        tenants=TenantDirectory(
            file_tenants=file_tenants,
            store=MongoTenantStore(database=database, secrets=secrets),
        ),
        secrets=secrets,
    )


def _redis_client(settings: Settings) -> RedisClient:
    return open_redis(
        settings.redis_url,
        cluster=settings.redis_cluster,
        timeout=settings.redis_timeout_seconds,
        max_connections=settings.redis_max_connections,
    )
