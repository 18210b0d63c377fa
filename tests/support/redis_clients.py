"""Redis clients of the tests' own, for the session's Redis: one server, or a Redis Cluster
when the session runs with CHAT_REDIS_CLUSTER=true (`make test-redis-cluster`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from devstack.stack import Endpoints
from server.repositories.redis_client import RedisClient, open_redis


def session_redis(stack: Endpoints, *, timeout: float = 5.0) -> RedisClient:
    """A client of the session's Redis, as the service would open it (a cluster client on a
    cluster); the caller closes it (``aclose``)."""
    return open_redis(stack.redis_url, cluster=stack.redis_cluster, timeout=timeout)


@pytest.fixture
async def redis_client(stack: Endpoints) -> AsyncIterator[RedisClient]:
    """A client of the session's Redis for one test, closed after it."""
    client = session_redis(stack)
    yield client
    await client.aclose()
