"""The fault suite's fixtures: each case gets servers of its own (a stack it may pause, server
processes it may kill), never the session's, and the run ends with a summary of the figures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from devstack.stack import Endpoints
from tests.support.bridge import TENANTS
from tests.support.chat_client import JWT_SETTINGS
from tests.support.faults import REPORTS, FaultStack
from tests.support.servers import tenants_file


@pytest.fixture
def fault_stack(tmp_path: Path) -> Iterator[FaultStack]:
    """MongoDB-wire, Redis and Kafka servers for this case alone."""
    stack = FaultStack(tmp_path / "stack")
    stack.start()
    yield stack
    stack.stop()


@pytest.fixture
def endpoints(fault_stack: FaultStack) -> Endpoints:
    assert fault_stack.endpoints is not None
    return fault_stack.endpoints


@pytest.fixture
def server_settings(tmp_path: Path) -> dict[str, str]:
    """The chat-server processes' settings: the test tenants, no platform reachable."""
    nowhere = "http://127.0.0.1:9"  # discard: replies to platforms fail fast, and are retried
    return {
        **JWT_SETTINGS,
        "CHAT_TENANTS_FILE": tenants_file(tmp_path, TENANTS),
        "CHAT_WHATSAPP_API_BASE": nowhere,
        "CHAT_MESSENGER_API_BASE": nowhere,
        "CHAT_SLACK_API_BASE": nowhere,
    }


@pytest.fixture
async def database(endpoints: Endpoints) -> AsyncIterator[AsyncDatabase[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        endpoints.mongodb_uri, tz_aware=True
    )
    yield client["chat"]
    await asyncio.wait_for(client.close(), 10)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not REPORTS:
        return
    terminalreporter.section("fault figures")
    for report in REPORTS:
        terminalreporter.write_line(report.line())
