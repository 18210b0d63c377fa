"""The database floor: what the service's writes cost the database when a bare client makes
them, with nothing of the service in between.

A plain PyMongo (async) client writes, for each SendMessage and for each first-contact webhook
through to its delivered reply, the documents the service writes (bench/floor_documents.py, in
the shapes of the service's repositories), under the service's own indexes (INDEXES of
server/repositories/mongo.py), group-committed as services/group_commit.py does it: one
transaction per batch of waiting exchanges, one bulk statement per collection, one batch in
flight, no two items of one conversation in a batch. The batches are capped at the size the
service reached in the same run, so the two are compared at the same batching. Where a change
is the same for every document of a batch (counters, removals), it is one statement naming
the list of ids (update_many, delete_many): the embedded store serves that for about half the
CPU of a statement per document (the service does so for its conversations' counters,
record_messages_many, for the reply jobs it completes, complete_many, and for the outbox
documents its relay removes). Its jobs and deliveries are queued leased to the stage that takes
them, as the service's are while its workers have room for them (services/queue_worker.py):
no poll and no claim.

What it writes, per exchange (the guard test, tests/integration/test_bench_floor.py, records
the service's writes and the floor's and holds both to SEND_MESSAGE_WRITES and WEBHOOK_WRITES):

SendMessage (text on the web channel, no request_id, as bench.common.send_message_call sends;
so no idempotency record, which only a request_id asks for), in the batch's transaction:
  - conversations: a first message's conversation inserted (the target design of issue 22:
    inside the batch's transaction, not in one of its own), or the counters updated;
  - messages: the inbound message and the bot's reply;
  - outbox: one document holding the batch's events (MessageReceived, MessageSent,
    ConversationUpdated; ConversationStarted and SessionStarted for a first message);
  then the relay's part: the outbox document deleted once published.

A first-contact WhatsApp webhook, in three transactions as the service's three stages:
  - ingest (answered once committed): the conversation inserted, the ingested-event record,
    the inbound message, the outbox document (ConversationStarted, SessionStarted,
    MessageReceived, ConversationUpdated), the reply job, queued leased to the process's
    reply worker (which is handed it after the commit, so no claim follows);
  - reply: in the transaction the job deleted, the counters updated, the reply stored, its
    delivery queued, the outbox (ConversationUpdated);
  - delivery (queued leased to the process's delivery worker: no claim follows either): in
    the transaction the delivery's outcome (sent), the message's status and platform id,
    the outbox (MessageSent), after looking for receipts that arrived early; each stage's
    outbox document deleted once published.

Its reads are only those a plain client cannot do without: the counters after their update
(the new messages' sequence numbers) and the early receipts. It knows what it wrote itself, so
it reads back no job or delivery, nor the message it delivers, and it starts on an empty
database of its own, of which it is the only writer: a new user has no conversation (the
unique one_active_per_user_channel index would refuse a second one), and no platform event
comes twice. The platform's HTTP send is not the database's and is left out.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from bench import floor_documents as docs
from bench.floor_commit import Batches, OutboxRemoval, in_transaction
from chat.v1 import common_pb2, events_pb2
from server.repositories.mongo import (
    CONVERSATIONS,
    DELIVERIES,
    INDEXES,
    INGESTED_EVENTS,
    MESSAGES,
    OUTBOX,
    REPLY_JOBS,
)

Document = dict[str, Any]

#: Write commands by collection, for one SendMessage exchange (a first message and the next).
SEND_MESSAGE_WRITES: dict[str, frozenset[str]] = {
    CONVERSATIONS: frozenset({"insert", "update"}),
    MESSAGES: frozenset({"insert"}),
    OUTBOX: frozenset({"insert", "delete"}),
}
#: Write commands by collection, for one first-contact webhook through to its delivered reply.
WEBHOOK_WRITES: dict[str, frozenset[str]] = {
    CONVERSATIONS: frozenset({"insert", "update"}),
    INGESTED_EVENTS: frozenset({"insert"}),
    MESSAGES: frozenset({"insert", "update"}),
    OUTBOX: frozenset({"insert", "delete"}),
    REPLY_JOBS: frozenset({"insert", "delete"}),
    DELIVERIES: frozenset({"insert", "update"}),
}
#: The JWT subject of the bench's SendMessage calls: the events' actor.
CALLER = "dev-user"


async def prepare(database: AsyncDatabase[Document]) -> None:
    """The service's indexes on every collection the floor writes."""
    for collection in sorted({*SEND_MESSAGE_WRITES, *WEBHOOK_WRITES}):
        await database[collection].create_indexes(INDEXES[collection])


class Writer:
    """The collections, and the statements both floors make the same way."""

    def __init__(self, database: AsyncDatabase[Document]) -> None:
        self.client = database.client
        self.conversations = database[CONVERSATIONS]
        self.messages = database[MESSAGES]
        self.outbox = database[OUTBOX]
        self.removal = OutboxRemoval(self.outbox)

    async def record(
        self,
        ids: Iterable[str],
        *,
        inbound: int,
        outbound: int,
        now: dt.datetime,
        tx: AsyncClientSession,
    ) -> dict[str, Document]:
        """Count new messages in existing active conversations; their states after it (each
        one's last_sequence numbers its last new message)."""
        wanted = list(ids)
        if not wanted:
            return {}
        # One statement for all: their change is the same. The embedded store updates a
        # list of ids in one statement for half the cost of a statement per document.
        await self.conversations.update_many(
            {"_id": {"$in": wanted}, "tenant_id": docs.TENANT, "status": docs.ACTIVE},
            docs.counters(inbound=inbound, outbound=outbound, now=now),
            session=tx,
        )
        cursor = self.conversations.find(
            {"_id": {"$in": wanted}, "tenant_id": docs.TENANT}, session=tx
        )
        return {document["_id"]: document async for document in cursor}

    async def store(
        self,
        tx: AsyncClientSession,
        *,
        started: list[Document],
        messages: list[common_pb2.Message],
        events: list[Document],
        now: dt.datetime,
    ) -> str:
        """The new conversations, the messages and the events; the outbox document's id."""
        if started:
            await self.conversations.insert_many(started, session=tx)
        await self.messages.insert_many([docs.message_document(m) for m in messages], session=tx)
        outbox = docs.outbox_document(events, now)
        await self.outbox.insert_one(outbox, session=tx)
        return str(outbox["_id"])


def started_events(started: Document, actor: str, now: dt.datetime) -> list[Document]:
    """ConversationStarted (the conversation before its first message) and SessionStarted."""
    counters = ("message_count", "inbound_message_count", "outbound_message_count")
    before = docs.conversation_pb(started | dict.fromkeys((*counters, "last_sequence"), 0))
    return [
        docs.event(
            started["_id"],
            actor,
            now,
            conversation_started=events_pb2.ConversationStarted(conversation=before),
        ),
        docs.event(
            started["_id"],
            actor,
            now,
            session_started=events_pb2.SessionStarted(session=docs.session_pb(before, now)),
        ),
    ]


def updated(state: Document, actor: str, now: dt.datetime) -> Document:
    after = events_pb2.ConversationUpdated(conversation=docs.conversation_pb(state))
    return docs.event(state["_id"], actor, now, conversation_updated=after)


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class SendMessageFloor:
    """SendMessage's writes: a text from a web user, and the bot's answer."""

    TEXT = "hello there"

    def __init__(self, *, database: AsyncDatabase[Document], max_batch: int) -> None:
        self._writer = Writer(database)
        #: Each user's active conversation (the service remembers them too).
        self._active: dict[str, str] = {}
        self.batches: Batches[str, None] = Batches(
            self._store, key=lambda user: user, max_batch=max_batch
        )

    async def seed(self, users: Iterable[str]) -> None:
        """Conversations that exist before the measurement (the service's, when it starts)."""
        now = now_utc()
        started = [
            docs.conversation(
                user_id=user, channel=docs.WEB, address="", now=now, inbound=0, outbound=0
            )
            for user in users
            if user not in self._active
        ]
        if started:
            await self._writer.conversations.insert_many(started)
            self._active.update((c["user_id"], c["_id"]) for c in started)

    async def send(self, user: str) -> None:
        """One exchange, answered once committed."""
        await self.batches.submit(user)

    async def settled(self) -> None:
        """Until the published events have left the outbox."""
        await self._writer.removal.flush()

    async def _store(self, users: list[str]) -> list[None]:
        now = now_utc()

        async def work(tx: AsyncClientSession) -> tuple[str, list[Document]]:
            started = {
                user: docs.conversation(
                    user_id=user, channel=docs.WEB, address="", now=now, inbound=1, outbound=1
                )
                for user in users
                if user not in self._active
            }
            states = await self._writer.record(
                (self._active[u] for u in users if u in self._active),
                inbound=1,
                outbound=1,
                now=now,
                tx=tx,
            )
            messages: list[common_pb2.Message] = []
            events: list[Document] = []
            for user in users:
                state = started[user] if user in started else states[self._active[user]]
                if user in started:
                    events += started_events(state, CALLER, now)
                last = state["last_sequence"]
                inbound = docs.text_message(
                    state,
                    sequence=last - 1,
                    text=self.TEXT,
                    now=now,
                    inbound=True,
                    metadata=docs.inbound_metadata(self.TEXT),
                )
                reply = docs.text_message(
                    state, sequence=last, text=docs.GREETING, now=now, inbound=False
                )
                reply.reply_to_message_id = inbound.id
                messages += [inbound, reply]
                events += [
                    docs.event(
                        state["_id"],
                        CALLER,
                        now,
                        message_received=events_pb2.MessageReceived(message=inbound),
                    ),
                    docs.event(
                        state["_id"],
                        CALLER,
                        now,
                        message_sent=events_pb2.MessageSent(message=reply),
                    ),
                    updated(state, CALLER, now),
                ]
            outbox = await self._writer.store(
                tx, started=list(started.values()), messages=messages, events=events, now=now
            )
            return outbox, list(started.values())

        outbox, started = await in_transaction(self._writer.client, work)
        self._active.update((c["user_id"], c["_id"]) for c in started)
        self._writer.removal.published(outbox)
        return [None] * len(users)
