"""Session fixtures: the real servers, started by the same code as `make run`.

CHAT_MONGODB_URI, CHAT_REDIS_URL and CHAT_KAFKA_BOOTSTRAP, when set, point the tests at
existing servers instead; the rest are started on free ports under a temporary directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.stack import EmbeddedStack, Endpoints

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_TENANTS = REPO_ROOT / "config" / "tenants.example.yaml"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoints]:
    """MongoDB-wire, Redis and Kafka endpoints for the whole test session."""
    embedded = EmbeddedStack(data_dir=tmp_path_factory.mktemp("stack"), environ=os.environ)
    endpoints = embedded.start()
    yield endpoints
    embedded.stop()
