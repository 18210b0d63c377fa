"""Session fixtures: the real servers, started by the same code as `make run`.

CHAT_MONGODB_URI, CHAT_REDIS_URL and CHAT_KAFKA_BOOTSTRAP, when set, point the tests at
existing servers instead; the rest are started on free ports under a temporary directory.

The fixtures the tests share live in tests/support and are registered here: pytest takes
``pytest_plugins`` only from this, the root conftest.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from devstack.stack import EmbeddedStack, Endpoints

# The helpers' asserts report like the tests' own (pytest rewrites test modules and conftests
# only); before anything imports tests.support.
pytest.register_assert_rewrite("tests.support")

pytest_plugins = [
    "tests.support.servers",
    "tests.support.bot_framework",
    "tests.support.stand_ins",
    "tests.support.ports",
    "tests.support.mongo_commands",
    "tests.support.scratch_db",
    "tests.support.redis_clients",
]


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoints]:
    """MongoDB-wire, Redis and Kafka endpoints for the whole test session."""
    embedded = EmbeddedStack(data_dir=tmp_path_factory.mktemp("stack"), environ=os.environ)
    endpoints = embedded.start()
    yield endpoints
    embedded.stop()
