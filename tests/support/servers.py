"""In-process chat servers on free ports, against the session's real servers: the fixtures
(registered in tests/conftest.py) and what the tests use with them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase

from devstack.stack import Endpoints
from server.clients import open_clients
from server.grpc_server import ChatServer
from server.repositories.mongo import OUTBOX, Document
from server.repositories.outbox import Record, records
from server.settings import Settings
from tests.support.paths import EXAMPLE_TENANTS
from tests.support.probe import PROBE_SCOPES, ProbeState, probe_handler


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


class RunningServer:
    """A started ChatServer with the probe service, and what its handlers saw."""

    def __init__(self, server: ChatServer, state: ProbeState) -> None:
        self.server = server
        self.state = state
        self.target = f"127.0.0.1:{server.port}"


class ServerStarter:
    """Starts chat servers (with the probe service) with settings overrides, and stops them."""

    def __init__(self, make_settings: Callable[..., Settings]) -> None:
        self._make_settings = make_settings
        self._started: list[ChatServer] = []

    async def __call__(self, **overrides: str) -> RunningServer:
        settings = self._make_settings(**overrides)
        state = ProbeState()
        server = ChatServer(
            settings=settings,
            clients=await open_clients(settings),
            required_scopes=PROBE_SCOPES,
            extra_handlers=[probe_handler(state)],
        )
        await server.start()
        self._started.append(server)
        return RunningServer(server, state)

    async def stop_all(self) -> None:
        """Stop every server started (again: a stopped server ignores it). A fixture that
        drops a database the servers use calls this first: a drop beside a server's open
        transaction can stall the embedded database."""
        for server in self._started:
            await server.stop()


@pytest.fixture
async def start_server(
    make_settings: Callable[..., Settings],
) -> AsyncIterator[ServerStarter]:
    """Start chat servers (with the probe service) with settings overrides; stopped after."""
    starter = ServerStarter(make_settings)
    yield starter
    await starter.stop_all()


@pytest.fixture(scope="session")
async def chat_server(make_settings: Callable[..., Settings]) -> AsyncIterator[str]:
    """The target (host:port) of a running chat server."""
    settings = make_settings()
    server = ChatServer(settings=settings, clients=await open_clients(settings))
    port = await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop()


@pytest.fixture
async def channel(chat_server: str) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(chat_server) as channel:
        yield channel


async def outbox_records(database: AsyncDatabase[Document]) -> list[Record]:
    """Every event waiting in the outbox, in the order written."""
    cursor = database[OUTBOX].find({}).sort("position", ASCENDING)
    return [record async for document in cursor for record in records(document)]


def tenants_file(tmp_path: Path, body: str) -> str:
    """Write a tenants file and return its path."""
    path = tmp_path / "tenants.yaml"
    path.write_text(body)
    return str(path)
