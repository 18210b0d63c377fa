"""The bridge's aiohttp application.

aiohttp rather than Starlette+uvicorn: one dependency gives both the server and the HTTP
client the platform adapters need, it reads the raw body bytes that signature checks require
without an ASGI layer in between, and its server is among the fastest pure-asyncio ones.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVER_CHANNEL = web.AppKey("server_channel", grpc.aio.Channel)


def create_app(*, server_target: str) -> web.Application:
    """Build the application; the gRPC channel opens on start-up, inside the loop."""
    app = web.Application()
    app.router.add_get("/healthz", healthz)

    async def channel_context(app: web.Application) -> AsyncIterator[None]:
        channel = grpc.aio.insecure_channel(server_target)
        app[SERVER_CHANNEL] = channel
        yield
        await channel.close(None)

    app.cleanup_ctx.append(channel_context)
    return app


async def healthz(request: web.Request) -> web.Response:
    """200 when the bridge is up and the chat server reports SERVING, else 503."""
    stub = health_pb2_grpc.HealthStub(request.app[SERVER_CHANNEL])
    try:
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
        server = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.aio.AioRpcError as exc:
        server = f"UNREACHABLE ({exc.code().name})"
    healthy = server == "SERVING"
    return web.json_response(
        {"status": "ok" if healthy else "unavailable", "server": server},
        status=200 if healthy else 503,
    )
