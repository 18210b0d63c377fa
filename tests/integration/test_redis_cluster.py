"""What Redis Cluster asks of the keys: each script and MULTI in one hash slot, the tenant's.

The slot check runs on a single server too (the slot is computed here the way the cluster
computes it), so a key without its tenant's hash tag fails in every run; the rest runs on the
three-primary cluster of `make test-redis-cluster`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from chat.v1 import chat_service_pb2 as chat
from chat.v1 import common_pb2 as c
from devstack.stack import Endpoints
from server.domain.limits import Limit, limit_key
from server.repositories.conversation_cache import RedisConversationCache
from server.repositories.live import LiveHub, RedisLiveEvents, live_channel
from server.repositories.rate_limits import RedisRateLimiter
from server.repositories.redis_client import RedisClient
from server.repositories.sessions import RedisSessionStore
from tests.support.redis_clients import session_redis
from tests.support.streams import WAIT, Event

pytestmark = pytest.mark.redis


def cluster_only(redis_client: RedisClient) -> RedisCluster:
    if not isinstance(redis_client, RedisCluster):
        pytest.skip("needs a Redis Cluster: make test-redis-cluster")
    return redis_client


def live_publisher(client: RedisClient) -> RedisLiveEvents:
    """The live events as a server process publishes them (another process than the hub's)."""
    return RedisLiveEvents(
        client=client,
        cache=RedisConversationCache(client=client),
        sessions=RedisSessionStore(client=client, ttl_seconds=60),
    )


def typing(participant: str) -> list[Event]:
    return [Event(typing=chat.TypingIndicator(participant_id=participant))]


async def test_every_key_of_a_tenant_is_in_the_tenants_slot(redis_client: RedisClient) -> None:
    """A message's session, its conversation's cache entry and live channel, the tenant's
    expiry index and rate limits: one slot, so each script and MULTI touching several of them
    runs on a cluster."""
    tenant = "slot-" + uuid.uuid4().hex[:8]
    now = dt.datetime.now(dt.UTC)
    sessions = RedisSessionStore(client=redis_client, ttl_seconds=60)
    cache = RedisConversationCache(client=redis_client)
    live = RedisLiveEvents(client=redis_client, cache=cache, sessions=sessions)
    conversation = c.Conversation(id="conv-1", user_id="u-1", channel=c.CHANNEL_TYPE_WEB)
    conversation.last_sequence = 1
    session, _ = await sessions.get_or_create(tenant, conversation, now=now)
    sessions.touch(session, now=now)
    assert await live.publish(
        tenant, conversation.id, typing("p"), conversation=conversation, session=session
    )
    limiter = RedisRateLimiter(client=redis_client)
    limits = (
        Limit(limit_key(tenant, "t"), 10, 5, "tenant"),
        Limit(limit_key(tenant, "u", "user-1"), 10, 5, "user:user-1"),
        Limit(limit_key(tenant, "pace", "1:C123"), 1, 3, "destination"),
    )
    assert (await limiter.check(limits)).allowed

    keys = {key.decode() async for key in redis_client.scan_iter(match=f"*{tenant}*")}
    assert len(keys) >= 8  # session, revision, pointer, index, cache entry, three limits
    names = {*keys, live_channel(tenant, conversation.id)}
    assert {key_slot(name.encode()) for name in names} == {key_slot(tenant.encode())}


async def test_the_tenants_spread_over_the_three_primaries(redis_client: RedisClient) -> None:
    cluster = cluster_only(redis_client)
    await cluster.initialize()
    primaries = cluster.get_primaries()
    assert len(primaries) == 3
    owners = {cluster.get_node_from_key(live_channel(f"tenant-{n}", "c")).name for n in range(30)}
    assert owners == {node.name for node in primaries}


async def test_live_events_of_tenants_on_every_primary_reach_another_process(
    stack: Endpoints, redis_client: RedisClient
) -> None:
    """One hub (a server process's) subscribed to conversations whose slots are on all three
    primaries; another client (another process's) publishes: each stream gets its own
    events, in order, and nothing of the others'."""
    cluster = cluster_only(redis_client)
    await cluster.initialize()
    by_primary: dict[str, str] = {}
    for n in range(64):
        tenant = f"fan-{uuid.uuid4().hex[:6]}-{n}"
        by_primary.setdefault(cluster.get_node_from_key(live_channel(tenant, "c")).name, tenant)
    tenants = sorted(by_primary.values())
    assert len(tenants) == 3
    hub_client = session_redis(stack)
    hub = LiveHub(client=hub_client, queue_limit=100)
    publisher = live_publisher(redis_client)
    try:
        subscriptions = [await hub.subscribe(tenant, "c") for tenant in tenants]
        for round_ in range(5):
            for tenant in tenants:
                await publisher.publish(tenant, "c", typing(f"{tenant}/{round_}"))
        for tenant, subscription in zip(tenants, subscriptions, strict=True):
            heard = []
            for _ in range(5):
                event = await asyncio.wait_for(subscription.next(), WAIT)
                assert event is not None
                heard.append(event.typing.participant_id)
            assert heard == [f"{tenant}/{round_}" for round_ in range(5)]
        for subscription in subscriptions:
            await hub.unsubscribe(subscription)
        assert hub.subscriber_count == 0
    finally:
        await hub.close()
        await hub_client.aclose()


async def test_a_hub_that_loses_a_primarys_connection_catches_up_and_goes_on(
    stack: Endpoints, redis_client: RedisClient
) -> None:
    """The primary owning a stream's channel drops the hub's pub/sub connection: the stream is
    told to catch up from storage (None), and hears what is published after."""
    cluster = cluster_only(redis_client)
    await cluster.initialize()
    tenant = "lost-" + uuid.uuid4().hex[:8]
    hub_client = session_redis(stack)
    hub = LiveHub(client=hub_client, queue_limit=100)
    publisher = live_publisher(redis_client)
    try:
        subscription = await hub.subscribe(tenant, "c")
        await publisher.publish(tenant, "c", typing("before"))
        event = await asyncio.wait_for(subscription.next(), WAIT)
        assert event is not None
        assert event.typing.participant_id == "before"
        owner = cluster.get_node_from_key(live_channel(tenant, "c"))
        assert owner is not None
        killed = await cluster.execute_command(
            "CLIENT", "KILL", "TYPE", "pubsub", target_nodes=owner
        )
        assert killed >= 1
        assert await asyncio.wait_for(subscription.next(), WAIT) is None  # catch up
        await publisher.publish(tenant, "c", typing("after"))
        event = await asyncio.wait_for(subscription.next(), WAIT)
        assert event is not None
        assert event.typing.participant_id == "after"
    finally:
        await hub.close()
        await hub_client.aclose()
