"""What the services need from storage, as Protocols (the repositories implement them).

``tx`` is the transaction handle a TransactionRunner passes to its work function; services
hand it on to the repositories without looking inside.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from chat.v1 import chat_service_pb2, common_pb2, events_pb2
from server.domain.conversations import ConversationFilter, Recording
from server.domain.messages import Advance, MessageRow
from server.domain.receipts import EarlyReceipt

T = TypeVar("T")
Tx = Any


class TransactionRunner(Protocol):
    """Runs work atomically, retrying it on transient conflicts."""

    async def run(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        """Run ``work`` in one transaction."""
        ...


class ConversationRepository(Protocol):
    """Conversations, scoped by tenant."""

    async def get(
        self, tenant_id: str, conversation_id: str, *, tx: Tx = None
    ) -> common_pb2.Conversation | None: ...

    async def find_active(
        self, tenant_id: str, user_id: str, channel: int
    ) -> common_pb2.Conversation | None: ...

    async def insert_active(
        self,
        tenant_id: str,
        *,
        user_id: str,
        channel: int,
        channel_conversation_id: str,
        now: dt.datetime,
        tx: Tx,
    ) -> common_pb2.Conversation: ...

    async def record_messages_many(
        self, recordings: Sequence[Recording], *, tx: Tx
    ) -> list[common_pb2.Conversation | None]: ...

    async def close(
        self, tenant_id: str, conversation_id: str, *, reason: str, now: dt.datetime, tx: Tx
    ) -> common_pb2.Conversation | None: ...

    async def list(
        self,
        tenant_id: str,
        filters: ConversationFilter,
        *,
        after: tuple[dt.datetime, str] | None,
        limit: int,
    ) -> list[common_pb2.Conversation]: ...


class EarlyReceiptStore(Protocol):
    """Receipts waiting for their message's send to be recorded (refs: receipt_ref)."""

    async def park(self, receipts: Sequence[EarlyReceipt], *, tx: Tx) -> None: ...

    async def waiting(self, refs: Sequence[str]) -> bool: ...

    async def take(self, refs: Sequence[str], *, tx: Tx) -> list[EarlyReceipt]: ...


class MessageRepository(Protocol):
    """Messages, scoped by tenant."""

    async def insert_rows(self, rows: Sequence[MessageRow], *, tx: Tx) -> None: ...

    async def history(
        self,
        tenant_id: str,
        conversation_id: str,
        *,
        after_sequence: int | None,
        newest_first: bool,
        limit: int,
    ) -> list[common_pb2.Message]: ...

    def all_in_order(
        self, tenant_id: str, conversation_id: str, *, batch_size: int = 500
    ) -> AsyncIterator[common_pb2.Message]: ...

    async def mark_read(
        self, tenant_id: str, conversation_id: str, *, up_to_sequence: int, tx: Tx
    ) -> list[common_pb2.Message]: ...

    async def get(self, tenant_id: str, message_id: str) -> common_pb2.Message | None: ...

    async def last_inbound(
        self, tenant_id: str, conversation_id: str
    ) -> common_pb2.Message | None: ...

    async def replace(self, tenant_id: str, message: common_pb2.Message) -> None: ...

    async def advance_many(
        self, changes: Sequence[Advance], *, tx: Tx
    ) -> list[common_pb2.Message]: ...

    async def known_platform_ids(
        self,
        tenant_id: str,
        channel: int,
        platform_message_ids: Sequence[str],
        *,
        tx: Tx | None = None,
    ) -> set[str]: ...

    async def apply_status(
        self,
        tenant_id: str,
        *,
        channel: int,
        status: common_pb2.DeliveryStatus.ValueType,
        platform_message_ids: Sequence[str],
        watermark: tuple[str, dt.datetime] | None,
        conversation_id: str | None = None,
        tx: Tx,
    ) -> list[common_pb2.Message]: ...

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
    ) -> list[common_pb2.Message]: ...


class Outbox(Protocol):
    """Events written with the data they describe."""

    async def add(
        self, envelopes: Sequence[events_pb2.EventEnvelope], *, now: dt.datetime, tx: Tx
    ) -> None: ...


class IdempotencyStore(Protocol):
    """Responses of completed idempotent requests."""

    async def get(self, tenant_id: str, operation: str, request_id: str) -> bytes | None: ...

    async def put(
        self,
        tenant_id: str,
        operation: str,
        request_id: str,
        response: bytes,
        *,
        now: dt.datetime,
        tx: Tx,
    ) -> None: ...


class SessionStore(Protocol):
    """Sessions with a time to live."""

    async def get(self, tenant_id: str, session_id: str) -> common_pb2.Session | None: ...

    async def current(
        self, tenant_id: str, conversation_id: str, *, now: dt.datetime
    ) -> common_pb2.Session | None: ...

    async def get_or_create(
        self, tenant_id: str, conversation: common_pb2.Conversation, *, now: dt.datetime
    ) -> tuple[common_pb2.Session, bool]: ...

    def touch(self, session: common_pb2.Session, *, now: dt.datetime) -> None: ...

    async def save(
        self, tenant_id: str, session: common_pb2.Session, *, now: dt.datetime
    ) -> None: ...

    async def end(
        self,
        tenant_id: str,
        session: common_pb2.Session,
        *,
        now: dt.datetime,
        status: common_pb2.SessionStatus.ValueType = ...,
    ) -> common_pb2.Session: ...

    async def claim_expired(self, *, now: dt.datetime, limit: int) -> list[tuple[str, str]]: ...

    async def reindex(self, tenant_id: str, session: common_pb2.Session) -> None: ...


class LiveEvents(Protocol):
    """Publishes a conversation's live events to every server process's streams."""

    async def publish(
        self,
        tenant_id: str,
        conversation_id: str,
        events: Sequence[chat_service_pb2.StreamConversationEventsResponse],
        *,
        conversation: common_pb2.Conversation | None = None,
        session: common_pb2.Session | None = None,
    ) -> None: ...


class LiveSubscription(Protocol):
    """One stream's queue of live events; None means "catch up from storage"."""

    async def next(
        self, *, idle_seconds: float, deadline: float
    ) -> chat_service_pb2.StreamConversationEventsResponse | None:
        """The next event; None after ``idle_seconds`` without one, or at the ``deadline``
        (time.monotonic()), or when events may have been missed."""
        ...


class LiveSubscriptions(Protocol):
    """Subscribes streams to a conversation's live events."""

    async def subscribe(self, tenant_id: str, conversation_id: str) -> LiveSubscription:
        """Returns once every later publish is sure to arrive."""
        ...

    async def unsubscribe(self, subscription: Any) -> None: ...


class ConversationCache(Protocol):
    """Conversation state cached for reads."""

    async def get(self, tenant_id: str, conversation_id: str) -> common_pb2.Conversation | None: ...

    async def fill(self, tenant_id: str, conversation: common_pb2.Conversation) -> bool: ...
