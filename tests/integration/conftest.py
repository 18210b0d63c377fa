"""An in-process chat server on a free port, against the session's real servers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from devstack.stack import Endpoints
from server.bootstrap import ChatServer, create_resources
from server.settings import Settings
from tests.conftest import EXAMPLE_TENANTS


@pytest.fixture(scope="session")
def make_settings(stack: Endpoints) -> Callable[..., Settings]:
    def make(**overrides: str) -> Settings:
        env = {
            **stack.as_env(),
            "CHAT_GRPC_ADDRESS": "127.0.0.1:0",
            "CHAT_METRICS_ADDRESS": "127.0.0.1:0",
            "CHAT_TENANTS_FILE": str(EXAMPLE_TENANTS),
            "CHAT_HEALTH_CHECK_INTERVAL_SECONDS": "0.2",
            "CHAT_SHUTDOWN_GRACE_SECONDS": "2",
            **overrides,
        }
        return Settings.from_env(env)

    return make


@pytest.fixture(scope="session")
async def chat_server(make_settings: Callable[..., Settings]) -> AsyncIterator[str]:
    """The target (host:port) of a running chat server."""
    settings = make_settings()
    server = ChatServer(settings=settings, resources=await create_resources(settings))
    port = await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop()


@pytest.fixture
async def channel(chat_server: str) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(chat_server) as channel:
        yield channel
