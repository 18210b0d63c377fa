"""Sessions in Redis.

A session is live until its ``expire_time``, which activity extends. Its keys outlive that by
KEEP_AFTER_EXPIRY_SECONDS so the expiry sweep can still read it to report SessionEnded. Keys:
the session itself (protobuf bytes), its revision, the conversation's pointer to its current
session and the tenant's index of expiry times, all carrying the tenant in braces (one Redis
Cluster slot per tenant, so one script writes them together); plus one set naming the tenants
that have an index, which the expiry sweep walks. Each expiry is claimed exactly once (ZREM is
atomic).

Every change is a compare-and-set on the session's revision, kept beside it in a key of its
own (a Lua script compares and writes both): a change made to a session that changed
meanwhile is refused, and ``update`` applies it again to the newer one. So SendMessage's context
updates, UpdateSessionContext, EndSession and the expiry sweep never overwrite each other, and
an ended session is never revived by a message that read it before it ended.

Every call is bounded by the client's timeout (CHAT_REDIS_TIMEOUT_MS); a Redis that does not
answer in time is RedisUnavailableError, which a message's caller sees as UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import uuid
from collections.abc import Callable

from chat.v1 import common_pb2
from server.domain.errors import SessionContendedError
from server.domain.session import is_live
from server.repositories.redis_client import RedisClient, RedisPipeline
from server.repositories.redis_errors import translate_redis_errors

KEEP_AFTER_EXPIRY_SECONDS = 3600
#: The tenants whose expiry index may hold sessions (a tenant stays once added: the set is as
#: small as the tenant count, and a stale member costs the sweep one empty read).
EXPIRY_TENANTS = "chat:session-expiry-tenants"
#: The one index of every tenant's sessions that came before the per-tenant ones (its keys
#: were in no tenant's slot, which Redis Cluster refuses in a script). The sweep still drains
#: it, so sessions indexed there before an upgrade still end; it stays empty after that.
LEGACY_EXPIRY_INDEX = "chat:session-expiry"
_SEPARATOR = "\x1f"

#: Attempts of ``update`` before a session that keeps changing is reported as contended.
UPDATE_ATTEMPTS = 8

# The session the pointer names, and its revision, in one round trip. Their keys are built
# here rather than declared in KEYS (they depend on the pointer's value). A single Redis server
# does not mind; on Redis Cluster they carry the same {tenant} hash tag as the pointer, so all
# are in one slot and the script runs, though undeclared keys are outside Redis's documented
# contract there.
_CURRENT = """
local id = redis.call('GET', KEYS[1])
if not id then
  return false
end
return {redis.call('GET', ARGV[1] .. id) or '', redis.call('GET', ARGV[2] .. id) or '0'}
"""

# KEYS: session, revision, conversation pointer, expiry index. ARGV: the revision the change
# was made to, the session (at that revision + 1), the keys' time to live, "keep" (point the
# conversation at the session, index its expiry) or "end" (clear the pointer if it names the
# session, unindex it), the session id, its index member and its expiry score. 1 when stored;
# 0 when the session changed meanwhile; -1 (keep) when the conversation has moved on to
# another session (this one expired and a new one started): nothing is written then, so a
# message that read the old session does not point the conversation back at it. Every key is
# in the tenant's slot, as Redis Cluster needs of a script.
_STORE_IF_UNCHANGED = """
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
if current ~= tonumber(ARGV[1]) then
  return 0
end
local id = ARGV[5]
local pointed = redis.call('GET', KEYS[3])
if ARGV[4] == 'keep' and pointed and pointed ~= id then
  return -1
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
redis.call('SET', KEYS[2], current + 1, 'EX', ARGV[3])
if ARGV[4] == 'keep' then
  redis.call('SET', KEYS[3], id, 'EX', ARGV[3])
  redis.call('ZADD', KEYS[4], ARGV[7], ARGV[6])
else
  if pointed == id then
    redis.call('DEL', KEYS[3])
  end
  redis.call('ZREM', KEYS[4], ARGV[6])
end
return 1
"""
#: _STORE_IF_UNCHANGED's answers.
STORED, CHANGED, REPLACED = 1, 0, -1

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


def _revision_key(tenant_id: str, session_id: str) -> str:
    return f"chat:{{{tenant_id}}}:session-revision:{session_id}"


def _pointer_key(tenant_id: str, conversation_id: str) -> str:
    return f"chat:{{{tenant_id}}}:conversation-session:{conversation_id}"


def expiry_index(tenant_id: str) -> str:
    """The tenant's sessions by expiry time."""
    return f"chat:{{{tenant_id}}}:session-expiry"


def _member(tenant_id: str, session_id: str) -> str:
    return f"{tenant_id}{_SEPARATOR}{session_id}"


class RedisSessionStore:
    """Create, read, extend, end and expire sessions."""

    def __init__(self, *, client: RedisClient, ttl_seconds: int) -> None:
        self._redis = client
        self._ttl = ttl_seconds
        self._key_ttl = ttl_seconds + KEEP_AFTER_EXPIRY_SECONDS
        self._delete_if_equal = client.register_script(_DELETE_IF_EQUAL)
        self._current = client.register_script(_CURRENT)

    @translate_redis_errors
    async def get(self, tenant_id: str, session_id: str) -> common_pb2.Session | None:
        """The session as stored (live, ended or expired), or None once its keys are gone."""
        raw, revision = await self._redis.mget(
            _session_key(tenant_id, session_id), _revision_key(tenant_id, session_id)
        )
        return _decoded(raw, revision)

    @translate_redis_errors
    async def current(
        self, tenant_id: str, conversation_id: str, *, now: dt.datetime
    ) -> common_pb2.Session | None:
        """The conversation's live session, if it has one."""
        found = await self._current(
            keys=[_pointer_key(tenant_id, conversation_id)],
            args=[_session_key(tenant_id, ""), _revision_key(tenant_id, "")],
        )
        if not isinstance(found, list) or len(found) != 2:
            return None
        session = _decoded(*found)
        return session if session is not None and is_live(session, now) else None

    @translate_redis_errors
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
            current = await self.current(tenant_id, conversation.id, now=now)
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
            await self._redis.set(session_key, session.SerializeToString(), ex=self._key_ttl)
            if await self._redis.set(pointer, session.id, nx=True, ex=self._key_ttl):
                await self._index(tenant_id, session)
                return session, True
            await self._redis.delete(session_key)
            stale = await self._redis.get(pointer)
            if stale:
                previous = await self.get(tenant_id, _text(stale))
                if previous is None or not is_live(previous, now):
                    # The pointer names a session that is over: clear it, unless it changed
                    # meanwhile. The sweep still reports the old session's end.
                    await self._delete_if_equal(keys=[pointer], args=[stale])
        raise RuntimeError("could not create or read the session")  # three lost races in a row

    @translate_redis_errors
    async def discard(self, tenant_id: str, session: common_pb2.Session) -> None:
        """Remove a session that was never used: created for a conversation whose first
        message was not stored, so no one else knows the conversation. No SessionEnded is
        reported for it (its SessionStarted was never written)."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.eval(
                _DELETE_IF_EQUAL, 1, _pointer_key(tenant_id, session.conversation_id), session.id
            )
            pipe.delete(_session_key(tenant_id, session.id), _revision_key(tenant_id, session.id))
            pipe.zrem(expiry_index(tenant_id), _member(tenant_id, session.id))
            await pipe.execute()

    @translate_redis_errors
    async def update(
        self,
        tenant_id: str,
        session_id: str,
        change: Callable[[common_pb2.Session], common_pb2.Session | None],
    ) -> common_pb2.Session | None:
        """Read the session, ``change`` it and store the result unless the session changed
        meanwhile; then read and change it again. ``change`` returns None to store nothing (it
        may raise to refuse). The session as stored at the end; None when there is none.
        SessionContendedError after UPDATE_ATTEMPTS lost races in a row."""
        for attempt in range(UPDATE_ATTEMPTS):
            if attempt:
                # Lost a race: let the others through before reading again (jittered, so the
                # losers do not collide again in step).
                await asyncio.sleep(random.uniform(0, 0.002 * attempt))  # noqa: S311 - not a secret
            session = await self.get(tenant_id, session_id)
            if session is None:
                return None
            changed = change(session)
            if changed is None:
                return session
            async with self._redis.pipeline(transaction=True) as pipe:
                index = self.queue_save(pipe, tenant_id, changed)
                answer = (await pipe.execute())[index]
            if answer == STORED:
                changed.revision += 1
                return changed
            if answer == REPLACED:
                return session  # no longer its conversation's session: nothing to change
        raise SessionContendedError("the session kept changing; retry")

    def queue_save(self, pipe: RedisPipeline, tenant_id: str, session: common_pb2.Session) -> int:
        """Queue the store of a changed session on ``pipe`` (a MULTI pipeline: the session, its
        revision, its conversation's pointer and its expiry go together), unless it changed
        since it was read: then nothing is written. ``session`` itself is left as it is (its
        revision is the one it was read at). The index of the pipeline's result: STORED,
        CHANGED or REPLACED."""
        return self._queue_store(pipe, tenant_id, session, pointer="keep")

    def _queue_store(
        self, pipe: RedisPipeline, tenant_id: str, session: common_pb2.Session, *, pointer: str
    ) -> int:
        index = len(pipe)
        stored = common_pb2.Session()
        stored.CopyFrom(session)
        stored.revision = session.revision + 1
        # EVAL with the script's text, as the conversation cache does (queue_store there):
        # no SCRIPT EXISTS round trip before the pipeline.
        pipe.eval(
            _STORE_IF_UNCHANGED,
            4,
            _session_key(tenant_id, session.id),
            _revision_key(tenant_id, session.id),
            _pointer_key(tenant_id, session.conversation_id),
            expiry_index(tenant_id),
            session.revision,
            stored.SerializeToString(),
            self._key_ttl,
            pointer,
            session.id,
            _member(tenant_id, session.id),
            _score(session),
        )
        return index

    @translate_redis_errors
    async def end(
        self,
        tenant_id: str,
        session: common_pb2.Session,
        *,
        now: dt.datetime,
        status: common_pb2.SessionStatus.ValueType = common_pb2.SESSION_STATUS_ENDED,
    ) -> common_pb2.Session | None:
        """Mark the session ended (or expired), unless it changed since it was read (then
        None: the caller reads it again); it stays readable until its keys run out."""
        ended = common_pb2.Session()
        ended.CopyFrom(session)
        ended.status = status
        ended.end_time.FromDatetime(now)
        async with self._redis.pipeline(transaction=True) as pipe:
            index = self._queue_store(pipe, tenant_id, ended, pointer="end")
            stored = (await pipe.execute())[index] == STORED
        if not stored:
            return None
        ended.revision += 1
        return ended

    @translate_redis_errors
    async def claim_expired(self, *, now: dt.datetime, limit: int) -> list[tuple[str, str]]:
        """(tenant, session id) of sessions past their expiry, each claimed by exactly one
        caller across every process."""
        claimed: list[tuple[str, str]] = []
        tenants = sorted(_text(raw) for raw in await self._redis.smembers(EXPIRY_TENANTS))
        # A random first tenant: with more due than ``limit``, no tenant waits behind others.
        start = random.randrange(len(tenants)) if tenants else 0  # noqa: S311 - not a secret
        indexes = [LEGACY_EXPIRY_INDEX, *map(expiry_index, tenants[start:] + tenants[:start])]
        for index in indexes:
            if len(claimed) >= limit:
                break
            due = await self._redis.zrangebyscore(
                index, "-inf", now.timestamp(), start=0, num=limit - len(claimed)
            )
            for raw in due:
                if not isinstance(raw, bytes | str):
                    continue  # zrangebyscore without scores yields members only
                if await self._redis.zrem(index, raw) == 1:
                    tenant_id, _, session_id = _text(raw).partition(_SEPARATOR)
                    claimed.append((tenant_id, session_id))
        return claimed

    @translate_redis_errors
    async def reindex(self, tenant_id: str, session: common_pb2.Session) -> None:
        """Put a claimed session back in the index (it was extended after all)."""
        await self._index(tenant_id, session)

    def touch(self, session: common_pb2.Session, *, now: dt.datetime) -> None:
        """Record activity at ``now`` on the session (in memory; save() stores it)."""
        session.last_activity_time.FromDatetime(now)
        session.expire_time.FromDatetime(now + dt.timedelta(seconds=self._ttl))

    async def _index(self, tenant_id: str, session: common_pb2.Session) -> None:
        # The tenant is named before its index holds the session, so the sweep finds every
        # indexed session (the script's later ZADDs are for sessions indexed here first).
        await self._redis.sadd(EXPIRY_TENANTS, tenant_id)
        await self._redis.zadd(
            expiry_index(tenant_id), {_member(tenant_id, session.id): _score(session)}
        )


def _decoded(raw: object, revision: object) -> common_pb2.Session | None:
    """A session as stored, with its revision (0 for one stored before revisions were)."""
    if not isinstance(raw, bytes) or not raw:
        return None
    session = common_pb2.Session.FromString(raw)
    session.revision = int(revision) if isinstance(revision, bytes | str) and revision else 0
    return session


def _score(session: common_pb2.Session) -> float:
    return session.expire_time.ToDatetime(tzinfo=dt.UTC).timestamp()
