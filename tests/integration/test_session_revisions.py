"""Session writes are compare-and-set on the session's revision, against a real Redis: a change
made to a session that changed meanwhile is refused and applied again, never written over it."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import pytest

from chat.v1 import chat_service_pb2 as chat
from chat.v1 import common_pb2 as c
from server.repositories.conversation_cache import RedisConversationCache
from server.repositories.live import RedisLiveEvents
from server.repositories.redis_client import RedisClient
from server.repositories.sessions import LEGACY_EXPIRY_INDEX, RedisSessionStore, expiry_index

pytestmark = pytest.mark.redis


def _stores(
    redis_client: RedisClient,
) -> tuple[RedisSessionStore, RedisLiveEvents, str, dt.datetime]:
    """The session store and the live publisher over ``redis_client``, a tenant of the test's own,
    and now."""
    sessions = RedisSessionStore(client=redis_client, ttl_seconds=60)
    live = RedisLiveEvents(
        client=redis_client, cache=RedisConversationCache(client=redis_client), sessions=sessions
    )
    return sessions, live, f"rev-{uuid.uuid4().hex[:8]}", dt.datetime.now(dt.UTC)


def _conversation() -> c.Conversation:
    return c.Conversation(id=uuid.uuid4().hex, user_id="u-1", channel=c.CHANNEL_TYPE_WEB)


async def test_concurrent_updates_are_all_kept(redis_client: RedisClient) -> None:
    sessions, _, tenant, now = _stores(redis_client)
    session, _ = await sessions.get_or_create(tenant, _conversation(), now=now)

    def setting(key: str):  # type: ignore[no-untyped-def]
        def change(current: c.Session) -> c.Session:
            current.context.update({key: True})
            return current

        return change

    await asyncio.gather(*(sessions.update(tenant, session.id, setting(f"k{n}")) for n in range(5)))

    stored = await sessions.get(tenant, session.id)
    assert stored is not None
    assert sorted(stored.context.keys()) == sorted(f"k{n}" for n in range(5))
    assert stored.revision == 5


async def test_a_stale_save_is_refused_and_keeps_the_newer_session(
    redis_client: RedisClient,
) -> None:
    sessions, live, tenant, now = _stores(redis_client)
    conversation = _conversation()
    stale, _ = await sessions.get_or_create(tenant, conversation, now=now)

    def set_step(current: c.Session) -> c.Session:
        current.context.update({"step": "newer"})
        return current

    await sessions.update(tenant, stale.id, set_step)
    stale.context.update({"step": "stale"})
    typing = [chat.StreamConversationEventsResponse(typing=chat.TypingIndicator(typing=True))]

    kept = await live.publish(tenant, conversation.id, typing, session=stale)

    assert kept is False
    stored = await sessions.get(tenant, stale.id)
    assert stored is not None
    assert stored.context["step"] == "newer"
    assert stored.revision == 1


async def test_an_ended_session_is_not_revived_by_a_stale_save(
    redis_client: RedisClient,
) -> None:
    sessions, live, tenant, now = _stores(redis_client)
    conversation = _conversation()
    stale, _ = await sessions.get_or_create(tenant, conversation, now=now)
    ended = await sessions.end(tenant, stale, now=now)
    assert ended is not None
    assert ended.revision == 1

    kept = await live.publish(tenant, conversation.id, [], session=stale)

    assert kept is False
    stored = await sessions.get(tenant, stale.id)
    assert stored is not None
    assert stored.status == c.SESSION_STATUS_ENDED
    assert await sessions.current(tenant, conversation.id, now=now) is None
    # Ending it again from the stale copy is refused too: the caller reads it again.
    assert await sessions.end(tenant, stale, now=now) is None


async def test_a_stale_save_does_not_point_the_conversation_back_at_an_expired_session(
    redis_client: RedisClient,
) -> None:
    sessions, live, tenant, now = _stores(redis_client)
    conversation = _conversation()
    # A message read the session, which expired before the message was done with it...
    old, _ = await sessions.get_or_create(tenant, conversation, now=now - dt.timedelta(minutes=5))
    # ...and the next message started a new one.
    new, created = await sessions.get_or_create(tenant, conversation, now=now)
    assert created
    assert new.id != old.id
    score = await redis_client.zscore(expiry_index(tenant), f"{tenant}\x1f{old.id}")
    sessions.touch(old, now=now)

    kept = await live.publish(tenant, conversation.id, [], session=old)

    assert kept is False
    current = await sessions.current(tenant, conversation.id, now=now)
    assert current is not None
    assert current.id == new.id
    stored_old = await sessions.get(tenant, old.id)
    assert stored_old is not None
    assert stored_old.revision == 0  # not written
    assert await redis_client.zscore(expiry_index(tenant), f"{tenant}\x1f{old.id}") == score


async def test_a_refused_save_leaves_the_expiry_index_alone(redis_client: RedisClient) -> None:
    sessions, live, tenant, now = _stores(redis_client)
    conversation = _conversation()
    stale, _ = await sessions.get_or_create(tenant, conversation, now=now)
    assert await sessions.end(tenant, stale, now=now) is not None
    member = f"{tenant}\x1f{stale.id}"
    assert (
        await redis_client.zscore(expiry_index(tenant), member) is None
    )  # ended: out of the index

    assert await live.publish(tenant, conversation.id, [], session=stale) is False

    assert await redis_client.zscore(expiry_index(tenant), member) is None


async def test_sessions_indexed_before_the_per_tenant_indexes_still_expire(
    redis_client: RedisClient,
) -> None:
    """A session indexed in the one index of before (an upgrade from a version without the
    per-tenant indexes) is still claimed by the sweep, once."""
    sessions, _, tenant, now = _stores(redis_client)
    member = f"{tenant}\x1fold-session"
    await redis_client.zadd(LEGACY_EXPIRY_INDEX, {member: now.timestamp() - 60})
    try:
        first = await sessions.claim_expired(now=now, limit=1000)
        again = await sessions.claim_expired(now=now, limit=1000)
        assert (tenant, "old-session") in first
        assert (tenant, "old-session") not in again
    finally:
        await redis_client.zrem(LEGACY_EXPIRY_INDEX, member)
