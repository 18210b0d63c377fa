"""The Redis dependency, against the embedded server or CHAT_REDIS_URL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.stack import Endpoints
from server.clients import open_clients
from server.grpc_server import ChatServer
from server.repositories.redis_client import open_redis
from server.settings import Settings

pytestmark = pytest.mark.redis


async def redis_health(make_settings: Callable[..., Settings], **overrides: str) -> int:
    settings = make_settings(**overrides)
    server = ChatServer(settings=settings, clients=await open_clients(settings))
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="redis"), timeout=5
            )
            return int(reply.status)
    finally:
        await server.stop()


async def test_redis_is_reported_up(make_settings: Callable[..., Settings]) -> None:
    assert await redis_health(make_settings) == health_pb2.HealthCheckResponse.SERVING


async def test_an_unreachable_redis_is_reported_down(
    make_settings: Callable[..., Settings],
) -> None:
    status = await redis_health(make_settings, CHAT_REDIS_URL="redis://127.0.0.1:1/0")
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_a_burst_beyond_the_pool_waits_for_a_connection_instead_of_failing(
    stack: Endpoints,
) -> None:
    """Many more calls at once than connections: on one server each waits its turn (the
    pool of redis-py refused beyond 100 at once, and 1,000 SendMessages in flight were
    answered UNAVAILABLE by a Redis that was well)."""
    if stack.redis_cluster:
        pytest.skip("a cluster client's nodes refuse beyond their connections; see open_redis")
    client = open_redis(stack.redis_url, cluster=False, timeout=2.0, max_connections=4)
    key = f"burst:{uuid.uuid4().hex}"
    try:
        answers = await asyncio.gather(*(client.incr(key) for _ in range(300)))
        assert sorted(answers) == list(range(1, 301))
        pool = client.connection_pool
        assert len(pool._available_connections) + len(pool._in_use_connections) <= 4
    finally:
        await client.delete(key)
        await client.aclose()
