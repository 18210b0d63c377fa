"""The Redis client of a process: one server, or a Redis Cluster (CHAT_REDIS_CLUSTER=true).

The repositories take either. On a cluster every script, MULTI and pipeline keeps its keys in
one hash slot: every key and live channel carries its tenant in braces (``{tenant}``), so a
tenant's keys live together on one primary and the tenants spread over the primaries
(docs/scale-out.md).
"""

from __future__ import annotations

from typing import TypeAlias

import redis.asyncio as redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

RedisClient: TypeAlias = redis.Redis | RedisCluster
RedisPipeline: TypeAlias = Pipeline | ClusterPipeline


#: Connections to each Redis server when the caller names no number (tests, tools).
DEFAULT_MAX_CONNECTIONS = 256


def open_redis(
    url: str, *, cluster: bool, timeout: float, max_connections: int = DEFAULT_MAX_CONNECTIONS
) -> RedisClient:
    """A client every call of which is bounded by ``timeout``: a stalled Redis (a pause, a
    full network buffer) must not hold the calls on the request path, which either fail open
    (the rate limiter, live pushes) or answer UNAVAILABLE (the session a message needs).

    Past ``max_connections`` busy connections, a call to one server waits for a free one
    (also bounded by ``timeout``) instead of failing: redis-py's own pool refuses at once
    beyond 100, so a burst of calls (1,000 SendMessages in flight) was answered UNAVAILABLE
    by a Redis that was well. A cluster client has no such waiting pool; its nodes take
    ``max_connections`` each."""
    # Once more, at once, on a fresh connection when the pooled one was dropped (a restart,
    # an idle cut). Never after a timeout: redis-py's default (three more tries, backing off)
    # held every call for up to four timeouts when Redis stalled.
    retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
    if cluster:
        return RedisCluster.from_url(
            url,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            retry=retry,
            max_connections=max_connections,
        )
    pool = redis.BlockingConnectionPool.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=retry,
        max_connections=max_connections,
        timeout=timeout,
    )
    return redis.Redis.from_pool(pool)  # closing the client closes its pool
