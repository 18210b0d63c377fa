"""In-memory outbox, idempotency records, sessions, early receipts, and live events recorded."""

# ruff: noqa: ARG002 - the fakes take the Protocols' full signatures and ignore what they need not

from __future__ import annotations

import copy
import datetime as dt
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from chat.v1 import chat_service_pb2, common_pb2, events_pb2
from server.domain.errors import Aborted, AlreadyExists, StoreError
from server.domain.idempotency import RecordedResponse
from server.domain.receipts import EarlyReceipt, ReceiptRef, receipt_ref
from server.domain.session import is_live
from tests.support.memory_db import Database


class MemoryOutbox:
    """Outbox: the envelopes written, in order; an event id written before is AlreadyExists
    (the real outbox keys its documents on their events' ids)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @property
    def envelopes(self) -> list[events_pb2.EventEnvelope]:
        return list(self._db.outbox)

    def kinds(self) -> list[str]:
        """The payload kind of every event written, in order."""
        return [str(e.WhichOneof("payload")) for e in self._db.outbox]

    async def add(
        self, envelopes: Sequence[events_pb2.EventEnvelope], *, now: dt.datetime, tx: Any
    ) -> None:
        self._db.wrote(tx, "outbox")
        known = {e.event_id for e in self._db.outbox}
        if any(e.event_id in known for e in envelopes):
            raise AlreadyExists("an event with this id is waiting", reason="DUPLICATE_KEY")
        self._db.outbox.extend(copy.deepcopy(e) for e in envelopes)


class MemoryIdempotencyStore:
    """IdempotencyStore; ``miss_next_get`` answers the next get with None, as a get that ran
    just before a racing request committed would."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._misses = 0

    def miss_next_get(self) -> None:
        self._misses += 1

    async def get(self, tenant_id: str, operation: str, request_id: str) -> RecordedResponse | None:
        if self._misses:
            self._misses -= 1
            return None
        return self._db.idempotency.get((tenant_id, operation, request_id))

    async def put(
        self,
        tenant_id: str,
        operation: str,
        request_id: str,
        recorded: RecordedResponse,
        *,
        now: dt.datetime,
        tx: Any,
    ) -> None:
        if tx is not None:
            self._db.wrote(tx, "idempotency")
        key = (tenant_id, operation, request_id)
        if key in self._db.idempotency:
            raise AlreadyExists("the request was recorded before", reason="DUPLICATE_KEY")
        self._db.idempotency[key] = recorded


class MemorySessions:
    """SessionStore with a time to live (not part of the transactions: it stands for Redis)."""

    def __init__(self, *, ttl_seconds: int = 1800) -> None:
        self._ttl = dt.timedelta(seconds=ttl_seconds)
        self.sessions: dict[tuple[str, str], common_pb2.Session] = {}
        self._current: dict[tuple[str, str], str] = {}
        self.saved = 0
        #: The expiry index: (tenant, session id) -> expiry, as the Redis store's sorted set.
        self.index: dict[tuple[str, str], dt.datetime] = {}

    async def get(self, tenant_id: str, session_id: str) -> common_pb2.Session | None:
        found = self.sessions.get((tenant_id, session_id))
        return copy.deepcopy(found) if found is not None else None

    async def current(
        self, tenant_id: str, conversation_id: str, *, now: dt.datetime
    ) -> common_pb2.Session | None:
        session_id = self._current.get((tenant_id, conversation_id))
        session = self.sessions.get((tenant_id, session_id)) if session_id else None
        return copy.deepcopy(session) if session is not None and is_live(session, now) else None

    async def get_or_create(
        self, tenant_id: str, conversation: common_pb2.Conversation, *, now: dt.datetime
    ) -> tuple[common_pb2.Session, bool]:
        found = await self.current(tenant_id, conversation.id, now=now)
        if found is not None:
            return found, False
        session = common_pb2.Session(
            id=uuid.uuid4().hex,
            conversation_id=conversation.id,
            user_id=conversation.user_id,
            channel=conversation.channel,
            status=common_pb2.SESSION_STATUS_ACTIVE,
        )
        session.create_time.FromDatetime(now)
        self.touch(session, now=now)
        self.sessions[tenant_id, session.id] = copy.deepcopy(session)
        self._current[tenant_id, conversation.id] = session.id
        self.index[tenant_id, session.id] = session.expire_time.ToDatetime(tzinfo=dt.UTC)
        return session, True

    def touch(self, session: common_pb2.Session, *, now: dt.datetime) -> None:
        session.last_activity_time.FromDatetime(now)
        session.expire_time.FromDatetime(now + self._ttl)

    async def discard(self, tenant_id: str, session: common_pb2.Session) -> None:
        self.sessions.pop((tenant_id, session.id), None)
        self.index.pop((tenant_id, session.id), None)
        if self._current.get((tenant_id, session.conversation_id)) == session.id:
            del self._current[tenant_id, session.conversation_id]

    def store_if_unchanged(self, tenant_id: str, session: common_pb2.Session) -> bool:
        """Store ``session`` unless the stored one's revision moved since it was read (the
        compare-and-set the Redis store does in a script), one revision on."""
        stored = self.sessions.get((tenant_id, session.id))
        if (stored.revision if stored is not None else 0) != session.revision:
            return False
        self.saved += 1
        kept = copy.deepcopy(session)
        kept.revision += 1
        self.sessions[tenant_id, session.id] = kept
        if session.status == common_pb2.SESSION_STATUS_ACTIVE:
            self.index[tenant_id, session.id] = session.expire_time.ToDatetime(tzinfo=dt.UTC)
        else:
            self.index.pop((tenant_id, session.id), None)
        if session.status == common_pb2.SESSION_STATUS_ACTIVE:
            self._current[tenant_id, session.conversation_id] = session.id
        return True

    async def update(
        self,
        tenant_id: str,
        session_id: str,
        change: Callable[[common_pb2.Session], common_pb2.Session | None],
    ) -> common_pb2.Session | None:
        for _ in range(5):
            session = await self.get(tenant_id, session_id)
            if session is None:
                return None
            changed = change(session)
            if changed is None:
                return session
            if self.store_if_unchanged(tenant_id, changed):
                changed.revision += 1
                return changed
        raise Aborted("the session kept changing; retry", reason="SESSION_CONTENDED")

    async def end(
        self,
        tenant_id: str,
        session: common_pb2.Session,
        *,
        now: dt.datetime,
        status: common_pb2.SessionStatus.ValueType = common_pb2.SESSION_STATUS_ENDED,
    ) -> common_pb2.Session | None:
        ended = copy.deepcopy(session)
        ended.status = status
        ended.end_time.FromDatetime(now)
        if not self.store_if_unchanged(tenant_id, ended):
            return None
        ended.revision += 1
        if self._current.get((tenant_id, session.conversation_id)) == session.id:
            del self._current[tenant_id, session.conversation_id]
        return ended

    async def claim_expired(self, *, now: dt.datetime, limit: int) -> list[tuple[str, str]]:
        """Each due session once: it leaves the index, as the Redis store's ZREM does."""
        due = [key for key, expiry in self.index.items() if expiry <= now][:limit]
        for key in due:
            del self.index[key]
        return due

    async def reindex(self, tenant_id: str, session: common_pb2.Session) -> None:
        self.index[tenant_id, session.id] = session.expire_time.ToDatetime(tzinfo=dt.UTC)


@dataclass(frozen=True)
class Published:
    """One LiveEvents.publish call."""

    tenant_id: str
    conversation_id: str
    events: list[chat_service_pb2.StreamConversationEventsResponse]
    conversation: common_pb2.Conversation | None
    session: common_pb2.Session | None


class RecordingLiveEvents:
    """LiveEvents: records publishes (and stores the session, as the real one does);
    ``failing`` makes publish raise StoreError, as Redis down would."""

    def __init__(self, sessions: MemorySessions | None = None) -> None:
        self._sessions = sessions
        self.published: list[Published] = []
        self.failing = False

    async def publish(
        self,
        tenant_id: str,
        conversation_id: str,
        events: Sequence[chat_service_pb2.StreamConversationEventsResponse],
        *,
        conversation: common_pb2.Conversation | None = None,
        session: common_pb2.Session | None = None,
    ) -> bool:
        if self.failing:
            raise StoreError("redis is down")
        self.published.append(
            Published(
                tenant_id,
                conversation_id,
                [copy.deepcopy(e) for e in events],
                copy.deepcopy(conversation),
                copy.deepcopy(session),
            )
        )
        if session is not None and self._sessions is not None:
            return self._sessions.store_if_unchanged(tenant_id, session)
        return True

    def events(self, kind: str) -> list[chat_service_pb2.StreamConversationEventsResponse]:
        """Every published event of one kind (message, typing, delivery_status...)."""
        return [e for p in self.published for e in p.events if e.WhichOneof("event") == kind]


class MemoryEarlyReceipts:
    """EarlyReceiptStore: one receipt per ref and status."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @property
    def parked(self) -> list[EarlyReceipt]:
        return list(self._db.early_receipts.values())

    async def park(self, receipts: Sequence[EarlyReceipt], *, now: dt.datetime, tx: Any) -> None:
        self._db.wrote(tx, "early_receipts")
        for r in receipts:
            key = (
                f"{receipt_ref(r.tenant_id, r.channel, r.platform_message_id).key}|{int(r.status)}"
            )
            self._db.early_receipts.setdefault(key, r)

    def _under(self, refs: Sequence[ReceiptRef]) -> list[str]:
        wanted = {ref.key for ref in refs}
        return [key for key in self._db.early_receipts if key.rsplit("|", 1)[0] in wanted]

    async def waiting(self, refs: Sequence[ReceiptRef]) -> bool:
        return bool(self._under(refs))

    async def take(self, refs: Sequence[ReceiptRef], *, tx: Any) -> list[EarlyReceipt]:
        self._db.wrote(tx, "early_receipts")
        return [self._db.early_receipts.pop(key) for key in self._under(refs)]
