"""In-memory fakes of the Protocols in server/services/ports.py, for unit tests of the
services' rules.

They keep the rules of the real repositories that the services rely on (tenant scoping,
sequence numbers reserved only in active conversations, unique keys raising AlreadyExists,
leases on claimed queue items, status moving forward only), and MemoryTransactions rolls every
store back when the work raises, as a MongoDB transaction would.
"""

# ruff: noqa: ARG002 - the fakes take the Protocols' full signatures and ignore what they need not

from __future__ import annotations

import copy
import datetime as dt
import functools
from dataclasses import dataclass, field
from typing import Any

import pytest

from chat.v1 import common_pb2, ingest_service_pb2
from server.domain.limits import Decision, Limit
from server.processors.content import ContentProcessor
from server.processors.media import MediaProcessor
from server.processors.text import TextProcessor
from server.services.active_conversations import ActiveConversations
from server.services.composing import ReplyComposer
from server.services.event_writer import EventWriter
from server.services.idempotency import IdempotentRequests
from server.services.ingest import IngestService
from server.services.live import CommittedPush, QuietLiveEvents
from server.services.messages import MessageService
from server.services.opening import ConversationOpener
from server.services.receipts import Receipts
from server.services.responder import Reply
from tests.support.fakes import MemoryMediaStore, StaticFetcher
from tests.support.memory_conversations import MemoryConversations, MemoryMessages
from tests.support.memory_db import Database, MemoryTransactions
from tests.support.memory_queues import (
    MemoryDeliveries,
    MemoryIngestInbox,
    MemoryIngestLog,
    MemoryReplyJobs,
)
from tests.support.memory_stores import (
    MemoryEarlyReceipts,
    MemoryIdempotencyStore,
    MemoryOutbox,
    MemorySessions,
    RecordingLiveEvents,
)


class ScriptedRateLimiter:
    """RateLimiter: admits everything unless given decisions to answer (in order)."""

    def __init__(self, *decisions: Decision) -> None:
        self.decisions = list(decisions)
        self.checked: list[tuple[Limit, ...]] = []

    async def check(self, limits: tuple[Limit, ...]) -> Decision:
        self.checked.append(limits)
        return self.decisions.pop(0) if self.decisions else Decision(allowed=True)


class ScriptedResponder:
    """Responder that answers every message with the same texts, or raises ``error``."""

    def __init__(self, *texts: str, error: Exception | None = None) -> None:
        self.texts = texts
        self.error = error
        self.asked: list[common_pb2.Message] = []

    async def reply(
        self,
        *,
        tenant_id: str,
        conversation: common_pb2.Conversation,
        message: common_pb2.Message,
        context: dict[str, Any],
    ) -> Reply:
        self.asked.append(copy.deepcopy(message))
        if self.error is not None:
            raise self.error
        return Reply(
            tuple(common_pb2.Content(text=common_pb2.TextContent(text=t)) for t in self.texts)
        )


@dataclass
class MemoryStores:
    """Every fake over one Database, as bootstrap would hand the real ones out."""

    db: Database = field(default_factory=Database)

    def __post_init__(self) -> None:
        db = self.db
        self.transactions = MemoryTransactions(db)
        self.conversations = MemoryConversations(db)
        self.messages = MemoryMessages(db)
        self.outbox = MemoryOutbox(db)
        self.idempotency = MemoryIdempotencyStore(db)
        self.sessions = MemorySessions()
        self.live = RecordingLiveEvents(self.sessions)
        self.deliveries = MemoryDeliveries(db)
        self.reply_jobs = MemoryReplyJobs(db)
        self.ingest_log = MemoryIngestLog(db)
        self.ingest_inbox = MemoryIngestInbox(db)
        self.early_receipts = MemoryEarlyReceipts(db)
        self.limiter = ScriptedRateLimiter()


class Clock:
    """A clock that moves only when told to."""

    def __init__(self, start: dt.datetime = dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.UTC)) -> None:
        self.now = start

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> dt.datetime:
        self.now += dt.timedelta(**delta)
        return self.now


@functools.cache
def _text_processor() -> TextProcessor:
    return TextProcessor()


def content_processor() -> ContentProcessor:
    """The real content processing, with media stored in memory and no fetching."""
    return ContentProcessor(
        text=_text_processor(),
        media=MediaProcessor(store=MemoryMediaStore(), fetcher=StaticFetcher()),
    )


def conversation_opener(stores: MemoryStores) -> ConversationOpener:
    """A ConversationOpener over the fakes, remembering active conversations afresh."""
    return ConversationOpener(
        conversations=stores.conversations,
        sessions=stores.sessions,
        events=EventWriter(outbox=stores.outbox, transactions=stores.transactions),
        active=ActiveConversations(),
    )


def message_service(
    stores: MemoryStores, clock: Clock, responder: ScriptedResponder
) -> MessageService:
    """A MessageService over the fakes, with an opener of its own (as a server process has)."""
    content = content_processor()
    return MessageService(
        opener=conversation_opener(stores),
        composer=ReplyComposer(
            responder=responder, content=content, sessions=stores.sessions, clock=clock
        ),
        push=CommittedPush(live=QuietLiveEvents(stores.live), sessions=stores.sessions),
        requests=IdempotentRequests(store=stores.idempotency),
        conversations=stores.conversations,
        messages=stores.messages,
        outbox=stores.outbox,
        transactions=stores.transactions,
        content=content,
        deliveries=stores.deliveries,
        clock=clock,
    )


def message_event(
    event_id: str = "ev-1",
    text: str = "hello",
    *,
    channel: int = common_pb2.CHANNEL_TYPE_WHATSAPP,
    user: str = "15550001",
    chat: str = "15550001",
) -> ingest_service_pb2.InboundEvent:
    """A platform user's text message, as the bridge forwards it (WhatsApp by default)."""
    return ingest_service_pb2.InboundEvent(
        platform_event_id=event_id,
        channel=channel,
        platform_user_id=user,
        channel_conversation_id=chat,
        message=ingest_service_pb2.InboundMessage(
            platform_message_id=f"wamid.{event_id}",
            content=common_pb2.Content(text=common_pb2.TextContent(text=text)),
        ),
    )


def ingest_service(stores: MemoryStores, clock: Clock, **options: Any) -> IngestService:
    """An IngestService over the fakes; ``options`` are its callbacks and ``is_outage``."""
    live = QuietLiveEvents(stores.live)
    return IngestService(
        opener=conversation_opener(stores),
        push=CommittedPush(live=live, sessions=stores.sessions),
        conversations=stores.conversations,
        messages=stores.messages,
        outbox=stores.outbox,
        transactions=stores.transactions,
        content=content_processor(),
        ingest_log=stores.ingest_log,
        inbox=stores.ingest_inbox,
        reply_jobs=stores.reply_jobs,
        live=live,
        clock=clock,
        receipts=Receipts(
            messages=stores.messages,
            deliveries=stores.deliveries,
            early=stores.early_receipts,
            outbox=stores.outbox,
            transactions=stores.transactions,
            live=live,
        ),
        **options,
    )


@pytest.fixture
def stores() -> MemoryStores:
    """Every fake over one fresh in-memory database."""
    return MemoryStores()


@pytest.fixture
def clock() -> Clock:
    """A clock that moves only when a test moves it."""
    return Clock()
