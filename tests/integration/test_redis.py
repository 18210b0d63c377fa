"""The Redis dependency, against the embedded server or CHAT_REDIS_URL."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.clients import open_clients
from server.grpc_server import ChatServer
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
