"""What the services need from storage, as Protocols (the repositories implement them).

``tx`` is the transaction handle a TransactionRunner passes to its work function; services
hand it on to the repositories without looking inside. The rows the ports take and return are
in server/domain/, and the repositories translate their drivers' errors into the domain's
(AlreadyExists for a unique key, StoreError for Redis), so in-memory fakes can stand in for
them in unit tests (tests/support/memory_*.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from chat.v1 import chat_service_pb2, common_pb2, events_pb2
from server.domain.conversations import ConversationFilter, Recording
from server.domain.idempotency import RecordedResponse
from server.domain.limits import Decision, Limit
from server.domain.messages import Advance, MessageRow
from server.domain.queues import (
    Attempt,
    ClaimedInboxBatch,
    ClaimedReplyJob,
    Delivery,
    Due,
    Finish,
    Leasing,
    Outgoing,
    Position,
    ReplyJob,
    ReportedFailure,
    Waiting,
)
from server.domain.receipts import EarlyReceipt, ReceiptRef
from server.domain.tenant import StoredTenant, Tenant

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

    async def get_many(
        self, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], common_pb2.Conversation]:
        """By (tenant, conversation id), in one read; those not found are left out."""
        ...

    async def find_active(
        self, tenant_id: str, user_id: str, channel: int
    ) -> common_pb2.Conversation | None: ...

    async def find_active_many(
        self, tenant_id: str, users: Iterable[tuple[int, str]]
    ) -> dict[tuple[int, str], common_pb2.Conversation]: ...

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
    """Receipts waiting for their message's send to be recorded (under the ref of their message)."""

    async def park(self, receipts: Sequence[EarlyReceipt], *, now: dt.datetime, tx: Tx) -> None: ...

    async def waiting(self, refs: Sequence[ReceiptRef]) -> bool: ...

    async def take(self, refs: Sequence[ReceiptRef], *, tx: Tx) -> list[EarlyReceipt]: ...


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

    async def get_many(
        self, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], common_pb2.Message]:
        """By (tenant, message id), in one read; those not found are left out."""
        ...

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

    async def by_platform_ids(
        self, tenant_id: str, channel: int, platform_message_ids: Sequence[str], *, tx: Tx
    ) -> list[common_pb2.Message]: ...

    async def watermarked(
        self, tenant_id: str, conversation_id: str, before: dt.datetime, *, tx: Tx
    ) -> list[common_pb2.Message]: ...

    async def set_statuses(
        self,
        tenant_id: str,
        statuses: Sequence[tuple[str, common_pb2.DeliveryStatus.ValueType]],
        *,
        tx: Tx,
    ) -> None: ...

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

    async def get(
        self, tenant_id: str, operation: str, request_id: str
    ) -> RecordedResponse | None: ...

    async def put(
        self,
        tenant_id: str,
        operation: str,
        request_id: str,
        recorded: RecordedResponse,
        *,
        now: dt.datetime,
        tx: Tx | None,
    ) -> None:
        """Record the response (in ``tx``, or on its own); AlreadyExists when recorded before."""
        ...


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

    async def discard(self, tenant_id: str, session: common_pb2.Session) -> None:
        """Remove a session no one used (its conversation was never stored)."""
        ...

    async def update(
        self,
        tenant_id: str,
        session_id: str,
        change: Callable[[common_pb2.Session], common_pb2.Session | None],
    ) -> common_pb2.Session | None:
        """Read, ``change`` (None: store nothing) and store unless the session changed
        meanwhile, else again; the session as stored, None when there is none. Aborted when it
        kept changing."""
        ...

    async def end(
        self,
        tenant_id: str,
        session: common_pb2.Session,
        *,
        now: dt.datetime,
        status: common_pb2.SessionStatus.ValueType = ...,
    ) -> common_pb2.Session | None:
        """The session ended at ``now``; None when it changed since it was read (its
        revision), and nothing was written."""
        ...

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
    ) -> bool:
        """Publish, cache ``conversation``, and store ``session`` unless it changed since it
        was read: False then (nothing of the session written), True otherwise."""
        ...


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


class RateLimiter(Protocol):
    """Counts a request against its limits."""

    async def check(self, limits: tuple[Limit, ...]) -> Decision:
        """Charge every limit if all admit the request. StoreUnavailableError when the store
        cannot be reached, StoreError when it answers with an error."""
        ...


class DeliveryQueue(Protocol):
    """The outbound delivery queue: one record per outbound message, leased to one process
    at a time."""

    async def enqueue(
        self,
        tenant_id: str,
        messages: Sequence[common_pb2.Message],
        *,
        recipient_id: str,
        service_url: str,
        now: dt.datetime,
        tx: Tx,
    ) -> None: ...

    async def enqueue_many(
        self, outgoing: Sequence[Outgoing], *, tx: Tx, leasing: Leasing | None = None
    ) -> list[Delivery]:
        """Queue the messages; with ``leasing``, the first of each conversation (up to its
        slots) leased to its owner, returned to be handed over after the commit."""
        ...

    async def due(self, *, now: dt.datetime, limit: int) -> list[Due]: ...

    async def claim_many(
        self, items: Sequence[Due], *, owner: str, now: dt.datetime, lease: dt.timedelta
    ) -> list[Delivery]: ...

    async def first_waiting_before(
        self, positions: Sequence[Position]
    ) -> Mapping[Position, Waiting]:
        """Each position's earliest waiting delivery before it; those with none left out."""
        ...

    async def finish_many(self, finishes: Sequence[Finish], *, tx: Tx) -> bool: ...

    async def retry_later(
        self,
        delivery: Delivery,
        attempt: Attempt,
        *,
        due: dt.datetime,
        now: dt.datetime,
        parts_sent: int = 0,
        first_platform_id: str = "",
    ) -> bool: ...

    async def renew(self, delivery: Delivery, *, until: dt.datetime) -> bool:
        """Lease a delivery handed over until ``until``, if its lease is still the one it was
        handed with."""
        ...

    async def postpone(self, delivery: Delivery, *, due: dt.datetime) -> None: ...

    async def hold(
        self, tenant_id: str, channel: int, *, recipient_id: str | None, until: dt.datetime
    ) -> int: ...

    async def get(self, tenant_id: str, message_id: str) -> Delivery | None: ...

    async def failed_page(
        self,
        tenant_id: str,
        *,
        channel: int,
        updated_from: dt.datetime | None,
        updated_to: dt.datetime | None,
        after: tuple[dt.datetime, str] | None,
        limit: int,
    ) -> list[Delivery]: ...

    async def requeue(
        self, tenant_id: str, message_id: str, *, now: dt.datetime
    ) -> Delivery | None: ...

    async def fail_sent(
        self, tenant_id: str, failures: Sequence[ReportedFailure], *, tx: Tx
    ) -> None: ...


class ReplyJobQueue(Protocol):
    """Inbound messages waiting for their reply, leased to one process at a time."""

    async def enqueue_many(
        self, jobs: Sequence[ReplyJob], *, tx: Tx, leasing: Leasing | None = None
    ) -> list[ClaimedReplyJob]:
        """Queue the jobs; with ``leasing``, the first not held behind another (up to its
        slots) leased to its owner, returned to be handed over after the commit."""
        ...

    async def due(self, *, now: dt.datetime, limit: int) -> list[Due]: ...

    async def claim_many(
        self, items: Sequence[Due], *, owner: str, now: dt.datetime, lease: dt.timedelta
    ) -> list[ClaimedReplyJob]: ...

    async def earlier_waiting(self, positions: Sequence[Position]) -> Mapping[Position, bool]:
        """The positions behind a job still waiting (True); the others left out."""
        ...

    async def complete_many(self, jobs: Sequence[ClaimedReplyJob], *, tx: Tx) -> bool: ...

    async def postpone(
        self, job: ClaimedReplyJob, *, due: dt.datetime, counted: bool = True
    ) -> None: ...

    async def renew(self, job: ClaimedReplyJob, *, until: dt.datetime) -> bool:
        """Lease a job handed over until ``until``, if its claim still holds it."""
        ...

    async def hold(self, job: ClaimedReplyJob, *, until: dt.datetime) -> None:
        """Give the job back uncounted to wait for an earlier job of its conversation: due
        again when ``wake_next`` names its conversation, at ``until`` at the latest."""
        ...

    async def wake_next(self, conversations: Sequence[tuple[str, str]], *, now: dt.datetime) -> int:
        """Make the earliest held job of each (tenant, conversation) due ``now``; how many."""
        ...

    async def drop(self, job: ClaimedReplyJob) -> bool:
        """Remove a job still leased by this claim; whether it was."""
        ...


class IngestInbox(Protocol):
    """Batches of platform events stored whole, applied after the call in each tenant's
    order, leased to one process at a time."""

    async def enqueue(
        self, tenant_id: str, events: bytes, *, count: int, now: dt.datetime
    ) -> None: ...

    async def waiting(self, tenant_id: str) -> bool: ...

    async def due(self, *, now: dt.datetime, limit: int) -> list[Due]: ...

    async def claim_many(
        self, items: Sequence[Due], *, owner: str, now: dt.datetime, lease: dt.timedelta
    ) -> list[ClaimedInboxBatch]: ...

    async def earlier_waiting(self, batch: ClaimedInboxBatch) -> bool: ...

    async def complete(self, batch: ClaimedInboxBatch) -> bool: ...

    async def postpone(
        self, batch: ClaimedInboxBatch, *, due: dt.datetime, counted: bool = True
    ) -> None: ...

    async def set_aside(self, batch: ClaimedInboxBatch, *, error: str) -> None: ...


class IngestLog(Protocol):
    """Platform events already ingested (the deduplication record), per tenant and channel."""

    async def seen(self, tenant_id: str, channel: int, platform_event_id: str) -> bool: ...

    async def seen_many(
        self, tenant_id: str, events: Sequence[tuple[int, str]]
    ) -> set[tuple[int, str]]: ...

    async def record(
        self, tenant_id: str, channel: int, platform_event_id: str, *, now: dt.datetime, tx: Tx
    ) -> None: ...

    async def record_many(
        self, events: Sequence[tuple[str, int, str]], *, now: dt.datetime, tx: Tx
    ) -> None: ...


class TenantStore(Protocol):
    """Tenants stored through TenantService (the tenants file's are read at start-up)."""

    @property
    def writable(self) -> bool:
        """Whether secrets can be sealed (a key is configured)."""
        ...

    def fingerprint(self, request: bytes) -> str:
        """A keyed digest of a request that holds secrets (IdempotentRequests' fingerprint)."""
        ...

    async def get(self, tenant_id: str) -> StoredTenant | None: ...

    async def save(
        self, tenant: Tenant, *, expected_revision: int | None, tx: Tx | None = None
    ) -> StoredTenant:
        """RevisionConflictError when another writer came first; AddressTakenError when
        another tenant has the same platform address."""
        ...
