"""Sessions in Redis, with a time to live that activity extends.

Two keys per session, both with the session's TTL: the session itself (protobuf bytes) and the
conversation's pointer to its current session. Keys carry the tenant in braces, so a tenant's
keys share one Redis Cluster slot.
"""

from __future__ import annotations

import datetime as dt
import uuid

import redis.asyncio as redis

from chat.v1 import common_pb2

_DELETE_IF_EQUAL = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _text(value: bytes | str) -> str:
    # The client runs without decode_responses: values come back as bytes.
    return value.decode() if isinstance(value, bytes) else value


def _session_key(tenant_id: str, session_id: str) -> str:
    return f"chat:{{{tenant_id}}}:session:{session_id}"


def _pointer_key(tenant_id: str, conversation_id: str) -> str:
    return f"chat:{{{tenant_id}}}:conversation-session:{conversation_id}"


class RedisSessionStore:
    """Create, read, extend and end sessions."""

    def __init__(self, *, client: redis.Redis, ttl_seconds: int) -> None:
        self._redis = client
        self._ttl = ttl_seconds
        self._delete_if_equal = client.register_script(_DELETE_IF_EQUAL)

    async def get(self, tenant_id: str, session_id: str) -> common_pb2.Session | None:
        """The session, or None when unknown or expired."""
        raw = await self._redis.get(_session_key(tenant_id, session_id))
        # The client runs without decode_responses: values come back as bytes.
        return common_pb2.Session.FromString(raw) if isinstance(raw, bytes) and raw else None

    async def current(self, tenant_id: str, conversation_id: str) -> common_pb2.Session | None:
        """The conversation's live session, if it has one."""
        session_id = await self._redis.get(_pointer_key(tenant_id, conversation_id))
        if not session_id:
            return None
        return await self.get(tenant_id, _text(session_id))

    async def get_or_create(
        self,
        tenant_id: str,
        conversation: common_pb2.Conversation,
        *,
        now: dt.datetime,
    ) -> tuple[common_pb2.Session, bool]:
        """The conversation's live session, or a new one; True when it was created here."""
        pointer = _pointer_key(tenant_id, conversation.id)
        for _ in range(3):
            current = await self.current(tenant_id, conversation.id)
            if current is not None:
                return current, False
            session = common_pb2.Session(
                id=uuid.uuid4().hex,
                conversation_id=conversation.id,
                user_id=conversation.user_id,
                channel=conversation.channel,
                status=common_pb2.SESSION_STATUS_ACTIVE,
            )
            session.create_time.FromDatetime(now)
            self.touch(session, now=now)
            # The session is written before the pointer, so a pointer never names a session
            # that does not exist yet. NX: of two concurrent first messages, one pointer wins;
            # the loser drops its session and reads the winner's on the next pass.
            session_key = _session_key(tenant_id, session.id)
            await self._redis.set(session_key, session.SerializeToString(), ex=self._ttl)
            if await self._redis.set(pointer, session.id, nx=True, ex=self._ttl):
                return session, True
            await self._redis.delete(session_key)
            stale = await self._redis.get(pointer)
            if stale and await self.get(tenant_id, _text(stale)) is None:
                # The pointer outlived its session: clear it, unless it changed meanwhile.
                await self._delete_if_equal(keys=[pointer], args=[stale])
        raise RuntimeError("could not create or read the session")  # three lost races in a row

    async def save(self, tenant_id: str, session: common_pb2.Session, *, now: dt.datetime) -> None:
        """Store the session after activity, extending its expiry (one round trip)."""
        self.touch(session, now=now)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(_session_key(tenant_id, session.id), session.SerializeToString(), ex=self._ttl)
            pipe.set(_pointer_key(tenant_id, session.conversation_id), session.id, ex=self._ttl)
            await pipe.execute()

    async def end(
        self, tenant_id: str, session: common_pb2.Session, *, now: dt.datetime
    ) -> common_pb2.Session:
        """Mark the session ended; it stays readable until its TTL runs out."""
        session.status = common_pb2.SESSION_STATUS_ENDED
        session.end_time.FromDatetime(now)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(_session_key(tenant_id, session.id), session.SerializeToString(), ex=self._ttl)
            pipe.delete(_pointer_key(tenant_id, session.conversation_id))
            await pipe.execute()
        return session

    def touch(self, session: common_pb2.Session, *, now: dt.datetime) -> None:
        """Record activity at ``now`` on the session (in memory; save() stores it)."""
        session.last_activity_time.FromDatetime(now)
        session.expire_time.FromDatetime(now + dt.timedelta(seconds=self._ttl))
