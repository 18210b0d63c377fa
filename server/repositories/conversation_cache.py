"""Conversation state cached in Redis for GetConversation.

Every change to a conversation writes its new state to the cache after the commit (with the
live events, in one round trip); a read fills a missing entry from MongoDB; the worker's cache
handler replaces an existing entry with a newer state from the events (covering a write whose
cache update was lost). Each write carries the state's version: its last sequence, then open
before closed, then its update time; a Lua script stores only a newer version, so neither a
slow read nor a late event can put an older state back. The version leans on sequences, not
clocks, so servers with skewed clocks cannot hide a newer state.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from chat.v1 import common_pb2
from server.repositories.redis_client import RedisClient, RedisPipeline
from server.repositories.redis_errors import translate_redis_errors

_SCRIPT = resources.files("server.repositories").joinpath("conversation_cache.lua").read_text()
TTL_SECONDS = 300


def cache_key(tenant_id: str, conversation_id: str) -> str:
    """The entry of one conversation; the tenant in braces, as in every key (one Redis
    Cluster slot per tenant: a publish writes it in one MULTI with the session's keys)."""
    return f"chat:{{{tenant_id}}}:conversation:{conversation_id}"


def _version(conversation: common_pb2.Conversation) -> tuple[int, int]:
    """(order, update time in ms): later states compare greater."""
    stamp = conversation.update_time
    closed = conversation.status != common_pb2.CONVERSATION_STATUS_ACTIVE
    return conversation.last_sequence * 2 + closed, stamp.seconds * 1000 + stamp.nanos // 1_000_000


class RedisConversationCache:
    """Cached conversations of every tenant; each call names one."""

    def __init__(self, *, client: RedisClient, ttl_seconds: int = TTL_SECONDS) -> None:
        self._client = client
        self._store = client.register_script(_SCRIPT)
        self._ttl = ttl_seconds

    @translate_redis_errors
    async def get(self, tenant_id: str, conversation_id: str) -> common_pb2.Conversation | None:
        """The cached state, or None."""
        data = await self._client.hget(cache_key(tenant_id, conversation_id), "pb")
        if data is None:
            return None
        return common_pb2.Conversation.FromString(data.encode() if isinstance(data, str) else data)

    @translate_redis_errors
    async def fill(self, tenant_id: str, conversation: common_pb2.Conversation) -> bool:
        """Store a state just read from MongoDB, unless a newer one is cached."""
        return await self._put(tenant_id, conversation, create=True)

    async def refresh(self, tenant_id: str, conversation: common_pb2.Conversation) -> bool:
        """Replace a cached state with a newer one; a missing entry stays missing."""
        return await self._put(tenant_id, conversation, create=False)

    def queue_store(
        self, pipe: RedisPipeline, tenant_id: str, conversation: common_pb2.Conversation
    ) -> None:
        """Queue the store of a just-committed state on ``pipe`` (one round trip with the
        rest). The script goes as EVAL with its text: a registered script would make the
        pipeline ask Redis first whether it has it (SCRIPT EXISTS), a second round trip every
        time, and an EVALSHA the server lacks could not be sent again without publishing the
        pipeline's events twice."""
        pipe.eval(
            _SCRIPT,
            1,
            cache_key(tenant_id, conversation.id),
            *self._arguments(conversation, create=True),
        )

    async def _put(
        self, tenant_id: str, conversation: common_pb2.Conversation, *, create: bool
    ) -> bool:
        stored = await self._store(
            keys=[cache_key(tenant_id, conversation.id)],
            args=self._arguments(conversation, create=create),
        )
        return bool(stored)

    def _arguments(self, conversation: common_pb2.Conversation, *, create: bool) -> list[Any]:
        return [
            *_version(conversation),
            conversation.SerializeToString(),
            self._ttl,
            "1" if create else "0",
        ]
