"""In-memory conversations and messages (tenant scoping, sequences reserved only in active
conversations, status moving forward only)."""

# ruff: noqa: ARG002 - the fakes take the Protocols' full signatures and ignore what they need not

from __future__ import annotations

import copy
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from chat.v1 import common_pb2
from server.domain.conversations import ALREADY_ACTIVE, ConversationFilter, Recording
from server.domain.errors import AlreadyExists
from server.domain.messages import Advance, MessageRow
from server.domain.receipts import named_by_id
from server.repositories.messages import FORWARD_FROM
from tests.support.memory_db import ACTIVE, CLOSED, INBOUND, OUTBOUND, Database


class MemoryConversations:
    """ConversationRepository."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def add(
        self,
        tenant_id: str,
        *,
        user_id: str,
        channel: int,
        channel_conversation_id: str = "",
        status: int = ACTIVE,
        last_sequence: int = 0,
        now: dt.datetime,
        metadata: dict[str, str] | None = None,
    ) -> common_pb2.Conversation:
        """Seed a conversation (a test's given state)."""
        conversation = common_pb2.Conversation(
            id=uuid.uuid4().hex,
            user_id=user_id,
            channel=channel,
            status=status,
            channel_conversation_id=channel_conversation_id,
            last_sequence=last_sequence,
            message_count=last_sequence,
            metadata=metadata or {},
        )
        for stamp in (
            conversation.create_time,
            conversation.update_time,
            conversation.last_activity_time,
        ):
            stamp.FromDatetime(now)
        self._db.conversations[conversation.id] = (tenant_id, conversation)
        return copy.deepcopy(conversation)

    def close_now(self, tenant_id: str, conversation_id: str) -> None:
        """Close a conversation behind the services' back (another process did)."""
        owner, conversation = self._db.conversations[conversation_id]
        assert owner == tenant_id
        conversation.status = CLOSED

    async def get(
        self, tenant_id: str, conversation_id: str, *, tx: Any = None
    ) -> common_pb2.Conversation | None:
        found = self._db.conversations.get(conversation_id)
        if found is None or found[0] != tenant_id:
            return None
        return copy.deepcopy(found[1])

    async def get_many(
        self, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], common_pb2.Conversation]:
        found = {key: await self.get(*key) for key in keys}
        return {key: value for key, value in found.items() if value is not None}

    async def find_active(
        self, tenant_id: str, user_id: str, channel: int
    ) -> common_pb2.Conversation | None:
        for owner, conversation in self._db.conversations.values():
            if (
                owner == tenant_id
                and conversation.user_id == user_id
                and conversation.channel == channel
                and conversation.status == ACTIVE
            ):
                return copy.deepcopy(conversation)
        return None

    async def find_active_many(
        self, tenant_id: str, users: Iterable[tuple[int, str]]
    ) -> dict[tuple[int, str], common_pb2.Conversation]:
        found = {}
        for channel, user_id in set(users):
            conversation = await self.find_active(tenant_id, user_id, channel)
            if conversation is not None:
                found[channel, user_id] = conversation
        return found

    async def insert_active(
        self,
        tenant_id: str,
        *,
        user_id: str,
        channel: int,
        channel_conversation_id: str,
        now: dt.datetime,
        tx: Any,
    ) -> common_pb2.Conversation:
        self._db.wrote(tx, "conversations")
        if await self.find_active(tenant_id, user_id, channel) is not None:
            raise AlreadyExists("the user has an active conversation", reason="DUPLICATE_KEY")
        return self.add(
            tenant_id,
            user_id=user_id,
            channel=channel,
            channel_conversation_id=channel_conversation_id,
            now=now,
        )

    async def record_messages_many(
        self, recordings: Sequence[Recording], *, tx: Any
    ) -> list[common_pb2.Conversation | None]:
        self._db.wrote(tx, "conversations")
        ids = [r.conversation_id for r in recordings]
        if len(set(ids)) != len(ids):
            raise ValueError("a conversation may appear once per call")
        for r in recordings:
            if r.start is None:
                continue
            if await self.find_active(r.tenant_id, r.start.user_id, r.start.channel) is not None:
                # The unique index on active conversations: the transaction rolls back.
                raise AlreadyExists("an active conversation exists", reason=ALREADY_ACTIVE)
            self._db.conversations[r.start.id] = (r.tenant_id, copy.deepcopy(r.start))
        # As the store's: conversations whose counters move alike share one statement, and
        # its time is the latest of theirs.
        latest: dict[tuple[str, int, int, str], dt.datetime] = {}
        for r in recordings:
            if r.start is None:
                key = (r.tenant_id, r.inbound, r.outbound, r.service_url)
                latest[key] = max(latest.get(key, r.now), r.now)
        states: list[common_pb2.Conversation | None] = []
        for r in recordings:
            key = (r.tenant_id, r.inbound, r.outbound, r.service_url)
            now = r.now if r.start is not None else latest[key]
            found = self._db.conversations.get(r.conversation_id)
            if found is None or found[0] != r.tenant_id or found[1].status != ACTIVE:
                states.append(None)
                continue
            conversation = found[1]
            conversation.last_sequence += r.inbound + r.outbound
            conversation.message_count += r.inbound + r.outbound
            conversation.inbound_message_count += r.inbound
            conversation.outbound_message_count += r.outbound
            for time in (conversation.update_time, conversation.last_activity_time):
                if now > time.ToDatetime(tzinfo=dt.UTC):  # $max: never back
                    time.FromDatetime(now)
            if r.service_url:
                conversation.metadata["service_url"] = r.service_url
            states.append(copy.deepcopy(conversation))
        return states

    async def close(
        self, tenant_id: str, conversation_id: str, *, reason: str, now: dt.datetime, tx: Any
    ) -> common_pb2.Conversation | None:
        self._db.wrote(tx, "conversations")
        found = self._db.conversations.get(conversation_id)
        if found is None or found[0] != tenant_id or found[1].status != ACTIVE:
            return None
        conversation = found[1]
        conversation.status = CLOSED
        conversation.close_reason = reason
        conversation.close_time.FromDatetime(now)
        conversation.update_time.FromDatetime(now)
        return copy.deepcopy(conversation)

    async def list(
        self,
        tenant_id: str,
        filters: ConversationFilter,
        *,
        after: tuple[dt.datetime, str] | None,
        limit: int,
    ) -> list[common_pb2.Conversation]:
        found = [
            c
            for owner, c in self._db.conversations.values()
            if owner == tenant_id
            and (not filters.user_id or c.user_id == filters.user_id)
            and (not filters.channel or c.channel == filters.channel)
            and (not filters.status or c.status == filters.status)
        ]
        found.sort(key=lambda c: (c.create_time.ToDatetime(), c.id), reverse=True)
        if after is not None:
            found = [c for c in found if (c.create_time.ToDatetime(tzinfo=dt.UTC), c.id) < after]
        return [copy.deepcopy(c) for c in found[:limit]]


class MemoryMessages:
    """MessageRepository."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def of(self, tenant_id: str, conversation_id: str) -> list[common_pb2.Message]:
        """A conversation's stored messages in sequence order (for assertions)."""
        return sorted(
            (
                copy.deepcopy(m)
                for owner, m, _ in self._db.messages.values()
                if owner == tenant_id and m.conversation_id == conversation_id
            ),
            key=lambda m: m.sequence,
        )

    def all(self) -> list[common_pb2.Message]:
        return [copy.deepcopy(m) for _, m, _ in self._db.messages.values()]

    def add(self, tenant_id: str, message: common_pb2.Message) -> None:
        """Seed a stored message."""
        self._db.messages[message.id] = (tenant_id, copy.deepcopy(message), "")

    async def insert_rows(self, rows: Sequence[MessageRow], *, tx: Any) -> None:
        self._db.wrote(tx, "messages")
        for row in rows:
            if row.message.id in self._db.messages:
                raise AlreadyExists("a message with this id exists", reason="DUPLICATE_KEY")
            self._db.messages[row.message.id] = (
                row.tenant_id,
                copy.deepcopy(row.message),
                row.search_text,
            )

    async def history(
        self,
        tenant_id: str,
        conversation_id: str,
        *,
        after_sequence: int | None,
        newest_first: bool,
        limit: int,
    ) -> list[common_pb2.Message]:
        found = self.of(tenant_id, conversation_id)
        if newest_first:
            found.reverse()
        if after_sequence is not None:
            found = [
                m
                for m in found
                if (m.sequence < after_sequence if newest_first else m.sequence > after_sequence)
            ]
        return found[:limit]

    async def all_in_order(
        self, tenant_id: str, conversation_id: str, *, batch_size: int = 500
    ) -> AsyncIterator[common_pb2.Message]:
        for message in self.of(tenant_id, conversation_id):
            yield message

    async def mark_read(
        self, tenant_id: str, conversation_id: str, *, up_to_sequence: int, tx: Any
    ) -> list[common_pb2.Message]:
        self._db.wrote(tx, "messages")
        changed = []
        for owner, message, _ in self._db.messages.values():
            if (
                owner == tenant_id
                and message.conversation_id == conversation_id
                and message.direction == OUTBOUND
                and message.sequence <= up_to_sequence
                and message.delivery_status
                in (common_pb2.DELIVERY_STATUS_SENT, common_pb2.DELIVERY_STATUS_DELIVERED)
            ):
                message.delivery_status = common_pb2.DELIVERY_STATUS_READ
                changed.append(copy.deepcopy(message))
        return sorted(changed, key=lambda m: m.sequence)

    async def get(self, tenant_id: str, message_id: str) -> common_pb2.Message | None:
        found = self._db.messages.get(message_id)
        if found is None or found[0] != tenant_id:
            return None
        return copy.deepcopy(found[1])

    async def get_many(
        self, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], common_pb2.Message]:
        found = {key: await self.get(*key) for key in keys}
        return {key: value for key, value in found.items() if value is not None}

    async def last_inbound(self, tenant_id: str, conversation_id: str) -> common_pb2.Message | None:
        inbound = [m for m in self.of(tenant_id, conversation_id) if m.direction == INBOUND]
        return inbound[-1] if inbound else None

    async def replace(self, tenant_id: str, message: common_pb2.Message) -> None:
        found = self._db.messages.get(message.id)
        if found is not None and found[0] == tenant_id:
            kept = copy.deepcopy(message)
            kept.delivery_status = found[1].delivery_status
            self._db.messages[message.id] = (tenant_id, kept, found[2])

    async def advance_many(
        self, changes: Sequence[Advance], *, tx: Any
    ) -> list[common_pb2.Message]:
        self._db.wrote(tx, "messages")
        ids = [change.message_id for change in changes]
        if len(set(ids)) != len(ids):
            raise ValueError("a message may appear once per call")
        moved = []
        for change in changes:
            found = self._db.messages.get(change.message_id)
            if (
                found is not None
                and found[0] == change.tenant_id
                and found[1].delivery_status in FORWARD_FROM[change.status]
            ):
                found[1].delivery_status = change.status
                if change.platform_message_id:
                    found[1].platform_message_id = change.platform_message_id
                moved.append(copy.deepcopy(found[1]))
        return moved

    async def known_platform_ids(
        self,
        tenant_id: str,
        channel: int,
        platform_message_ids: Sequence[str],
        *,
        tx: Any = None,
    ) -> set[str]:
        # Like the real query: any message of the tenant's channel (it does not filter on
        # the direction).
        wanted = set(platform_message_ids)
        return {
            m.platform_message_id
            for owner, m, _ in self._db.messages.values()
            if owner == tenant_id and m.channel == channel and m.platform_message_id in wanted
        }

    async def by_platform_ids(
        self, tenant_id: str, channel: int, platform_message_ids: Sequence[str], *, tx: Any
    ) -> list[common_pb2.Message]:
        wanted = set(platform_message_ids)
        return [
            copy.deepcopy(m)
            for owner, m, _ in self._db.messages.values()
            if owner == tenant_id and m.channel == channel and m.platform_message_id in wanted
        ]

    async def watermarked(
        self, tenant_id: str, conversation_id: str, before: dt.datetime, *, tx: Any
    ) -> list[common_pb2.Message]:
        return [
            copy.deepcopy(m)
            for owner, m, _ in self._db.messages.values()
            if owner == tenant_id
            and m.conversation_id == conversation_id
            and m.direction == OUTBOUND
            and m.create_time.ToDatetime(tzinfo=dt.UTC) <= before
            and m.platform_message_id > ""
        ]

    async def set_statuses(
        self,
        tenant_id: str,
        statuses: Sequence[tuple[str, common_pb2.DeliveryStatus.ValueType]],
        *,
        tx: Any,
    ) -> None:
        if not statuses:
            return
        self._db.wrote(tx, "messages")
        for message_id, status in statuses:
            owner, message, _ = self._db.messages[message_id]
            assert owner == tenant_id
            message.delivery_status = status

    async def apply_status(
        self,
        tenant_id: str,
        *,
        channel: int,
        status: common_pb2.DeliveryStatus.ValueType,
        platform_message_ids: Sequence[str],
        watermark: tuple[str, dt.datetime] | None,
        conversation_id: str | None = None,
        tx: Any,
    ) -> list[common_pb2.Message]:
        self._db.wrote(tx, "messages")
        ids = {pid for pid in platform_message_ids if pid}
        outbound = [
            message
            for owner, message, _ in self._db.messages.values()
            if owner == tenant_id and message.direction == OUTBOUND
        ]
        named: dict[str, list[common_pb2.Message]] = {}
        for message in outbound:
            if message.channel == channel and message.platform_message_id in ids:
                named.setdefault(message.platform_message_id, []).append(message)
        targets = {
            m.id: m
            for group in named.values()
            for m in named_by_id(channel, group, conversation_id)
        }
        if watermark is not None:
            targets.update(
                (m.id, m)
                for m in outbound
                if m.conversation_id == watermark[0]
                and m.create_time.ToDatetime(tzinfo=dt.UTC) <= watermark[1]
                and m.platform_message_id > ""
            )
        changed = []
        for message in targets.values():
            if message.delivery_status in FORWARD_FROM[status]:
                message.delivery_status = status
                changed.append(copy.deepcopy(message))
        return sorted(changed, key=lambda m: m.sequence)

    async def search(
        self,
        tenant_id: str,
        needle: str,
        *,
        conversation_id: str = "",
        channel: int = 0,
        created_from: dt.datetime | None = None,
        created_to: dt.datetime | None = None,
        after: tuple[dt.datetime, str] | None,
        limit: int,
    ) -> list[common_pb2.Message]:
        found = [
            copy.deepcopy(m)
            for owner, m, text in self._db.messages.values()
            if owner == tenant_id
            and needle.casefold() in text
            and (not conversation_id or m.conversation_id == conversation_id)
            and (not channel or m.channel == channel)
        ]
        return found[:limit]
