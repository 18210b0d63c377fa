"""The database floor of a first-contact webhook (see bench/floor.py): a WhatsApp text message
stored by the ingest stage, answered by the reply stage, sent by the delivery stage, each
stage group-committed on its own, as the service's three are."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

from pymongo import UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from bench import floor_documents as docs
from bench.floor import Writer, now_utc, started_events, updated
from bench.floor_commit import Batches, in_transaction
from chat.v1 import common_pb2, events_pb2
from server.repositories.mongo import DELIVERIES, EARLY_RECEIPTS, INGESTED_EVENTS, REPLY_JOBS

Document = dict[str, Any]
#: The WhatsApp number the bench's webhooks reach (bench/ingest.py's).
PHONE_NUMBER_ID = "100000000000009"


@dataclass(frozen=True, slots=True)
class _Job:
    """A stored inbound message waiting for its reply."""

    id: str
    conversation: Document
    message_id: str


@dataclass(frozen=True, slots=True)
class _Delivery:
    """A stored reply waiting for its platform."""

    message: common_pb2.Message


class WebhookFloor:
    """A WhatsApp text webhook's writes, through the ingest, reply and delivery stages."""

    TEXT = "hello there"

    def __init__(
        self,
        *,
        database: AsyncDatabase[Document],
        ingest_batch: int,
        reply_batch: int,
        delivery_batch: int,
    ) -> None:
        self._writer = Writer(database)
        self._ingested = database[INGESTED_EVENTS]
        self._jobs = database[REPLY_JOBS]
        self._deliveries = database[DELIVERIES]
        self._early = database[EARLY_RECEIPTS]
        #: Each sender's active conversation, as stored.
        self._active: dict[str, Document] = {}
        self.ingest: Batches[str, _Job] = Batches(
            self._store_inbound, key=lambda sender: sender, max_batch=ingest_batch
        )
        self.replies: Batches[_Job, _Delivery] = Batches(
            self._reply, key=lambda job: job.conversation["_id"], max_batch=reply_batch
        )
        self.deliveries: Batches[_Delivery, None] = Batches(
            self._deliver, key=lambda d: d.message.conversation_id, max_batch=delivery_batch
        )
        self._after: set[asyncio.Task[None]] = set()
        self.delivered = 0

    async def webhook(self, sender: str) -> None:
        """One webhook's message, answered (the platform's 200) once stored; its reply and
        delivery follow, from their own stages."""
        job = await self.ingest.submit(sender)
        task = asyncio.create_task(self._answer(job))
        self._after.add(task)
        task.add_done_callback(self._after.discard)

    async def drained(self) -> None:
        """Until every stored message's reply is delivered and the outbox is empty."""
        while self._after:
            await asyncio.gather(*self._after)
        await self._writer.removal.flush()

    async def _answer(self, job: _Job) -> None:
        await self.deliveries.submit(await self.replies.submit(job))
        self.delivered += 1

    async def _store_inbound(self, senders: list[str]) -> list[_Job]:
        now = now_utc()

        async def work(tx: AsyncClientSession) -> tuple[str, list[Document], list[_Job]]:
            started = {
                sender: docs.conversation(
                    user_id=sender,
                    channel=docs.WHATSAPP,
                    address=sender,
                    now=now,
                    inbound=1,
                    outbound=0,
                )
                for sender in senders
                if sender not in self._active
            }
            states = await self._writer.record(
                (self._active[s]["_id"] for s in senders if s in self._active),
                inbound=1,
                outbound=0,
                now=now,
                tx=tx,
            )
            messages, events, records, jobs = [], [], [], []
            for sender in senders:
                known = self._active.get(sender)
                state = started[sender] if known is None else states[known["_id"]]
                if sender in started:
                    events += started_events(state, sender, now)
                platform_id = f"wamid.{uuid.uuid4().hex}"
                message = docs.text_message(
                    state,
                    sequence=state["last_sequence"],
                    text=self.TEXT,
                    now=now,
                    inbound=True,
                    platform_message_id=platform_id,
                    metadata=docs.inbound_metadata(
                        self.TEXT, user_display_name="Bench", platform_account_id=PHONE_NUMBER_ID
                    ),
                )
                messages.append(message)
                records.append(docs.ingested_event(docs.WHATSAPP, platform_id, now))
                job = docs.reply_job(message, now)
                jobs.append(job)
                events += [
                    docs.event(
                        state["_id"],
                        sender,
                        now,
                        message_received=events_pb2.MessageReceived(message=message),
                    ),
                    updated(state, sender, now),
                ]
            await self._ingested.insert_many(records, session=tx)
            outbox = await self._writer.store(
                tx, started=list(started.values()), messages=messages, events=events, now=now
            )
            await self._jobs.insert_many(jobs, session=tx)
            queued = [
                _Job(j["_id"], started.get(s) or self._active[s], j["message_id"])
                for s, j in zip(senders, jobs, strict=True)
            ]
            return outbox, list(started.values()), queued

        outbox, started, queued = await in_transaction(self._writer.client, work)
        self._active.update((c["user_id"], c) for c in started)
        self._writer.removal.published(outbox)
        return queued

    async def _reply(self, jobs: list[_Job]) -> list[_Delivery]:
        now = now_utc()
        # The jobs were queued leased to this process (docs.reply_job): no claim.
        ids = [job.id for job in jobs]

        async def work(tx: AsyncClientSession) -> tuple[str, list[_Delivery]]:
            await self._jobs.delete_many(
                {"_id": {"$in": ids}, "tenant_id": docs.TENANT, "owner": docs.OWNER}, session=tx
            )
            states = await self._writer.record(
                (j.conversation["_id"] for j in jobs), inbound=0, outbound=1, now=now, tx=tx
            )
            replies, events = [], []
            for job in jobs:
                state = states[job.conversation["_id"]]
                reply = docs.text_message(
                    state,
                    sequence=state["last_sequence"],
                    text=docs.GREETING,
                    now=now,
                    inbound=False,
                    reply_to=job.message_id,
                )
                replies.append(reply)
                events.append(updated(state, docs.BOT, now))
            await self._writer.messages.insert_many(
                [docs.message_document(m) for m in replies], session=tx
            )
            await self._deliveries.insert_many(
                [
                    docs.delivery(m, j.conversation["user_id"], now)
                    for m, j in zip(replies, jobs, strict=True)
                ],
                session=tx,
            )
            outbox = docs.outbox_document(events, now)
            await self._writer.outbox.insert_one(outbox, session=tx)
            return str(outbox["_id"]), [_Delivery(m) for m in replies]

        outbox, queued = await in_transaction(self._writer.client, work)
        self._writer.removal.published(outbox)
        return queued

    async def _deliver(self, deliveries: list[_Delivery]) -> list[None]:
        now = now_utc()
        # The deliveries were queued leased to this process (docs.delivery): no claim.
        platform_ids = [f"wamid.out-{uuid.uuid4().hex}" for _ in deliveries]

        async def work(tx: AsyncClientSession) -> str:
            await self._deliveries.bulk_write(
                [
                    UpdateOne(
                        {
                            "_id": d.message.id,
                            "tenant_id": docs.TENANT,
                            "owner": docs.OWNER,
                            "state": "sending",
                        },
                        docs.delivery_sent(platform_id, now),
                    )
                    for d, platform_id in zip(deliveries, platform_ids, strict=True)
                ],
                ordered=False,
                session=tx,
            )
            # Forward only, in the filter: no read of the messages first.
            await self._writer.messages.bulk_write(
                [
                    UpdateOne(
                        {
                            "_id": d.message.id,
                            "tenant_id": docs.TENANT,
                            "delivery_status": {
                                "$in": [
                                    common_pb2.DELIVERY_STATUS_QUEUED,
                                    common_pb2.DELIVERY_STATUS_FAILED,
                                ]
                            },
                        },
                        {
                            "$set": {
                                "delivery_status": common_pb2.DELIVERY_STATUS_SENT,
                                "platform_message_id": platform_id,
                            }
                        },
                    )
                    for d, platform_id in zip(deliveries, platform_ids, strict=True)
                ],
                ordered=False,
                session=tx,
            )
            # Receipts the platform sent before this outcome was recorded wait under these
            # refs (none here; the service looks, and so must any client that keeps them).
            refs = [f"{docs.TENANT}:{docs.WHATSAPP}:{p}" for p in platform_ids]
            await self._early.find(
                {"ref": {"$in": refs}, "tenant_id": {"$in": [docs.TENANT]}}, session=tx
            ).to_list()
            events = []
            for d, platform_id in zip(deliveries, platform_ids, strict=True):
                sent = common_pb2.Message()
                sent.CopyFrom(d.message)
                sent.delivery_status = common_pb2.DELIVERY_STATUS_SENT
                sent.platform_message_id = platform_id
                events.append(
                    docs.event(
                        sent.conversation_id,
                        docs.BOT,
                        now,
                        message_sent=events_pb2.MessageSent(message=sent),
                    )
                )
            outbox = docs.outbox_document(events, now)
            await self._writer.outbox.insert_one(outbox, session=tx)
            return str(outbox["_id"])

        self._writer.removal.published(await in_transaction(self._writer.client, work))
        return [None] * len(deliveries)
