"""Replies to ingested messages, generated after the platform was acknowledged, from the
durable reply queue.

A job is claimed with a lease; the replies are stored and the job removed in one transaction,
so a crash (or a lost lease) means the job is done again, never twice: a reply stored twice
would need two commits of the same job. Jobs of one conversation are answered in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from chat.v1 import common_pb2, events_pb2
from server.channels.base import READ, TYPING
from server.domain.conversations import Recording
from server.domain.messages import MessageRow
from server.domain.queues import (
    REPLY_HOLD_AT_MOST,
    ClaimedReplyJob,
    Delivery,
    Due,
    Outgoing,
    Position,
)
from server.events.envelopes import envelope
from server.services.coalescing import Coalescer
from server.services.composing import ReplyComposer
from server.services.group_commit import GroupCommit
from server.services.live import CommittedPush
from server.services.opening import ConversationOpener
from server.services.platform_actions import PlatformActions
from server.services.platform_media import InboundMediaResolver
from server.services.ports import (
    ConversationRepository,
    DeliveryQueue,
    MessageRepository,
    Outbox,
    ReplyJobQueue,
    TransactionRunner,
    Tx,
)
from server.services.queue_worker import LeasedQueueWorker, Reservation
from server.services.responder import RESPONDER_ID
from server.tracing.spans import span

log = structlog.get_logger("chat.replies")

LEASE = dt.timedelta(seconds=60)
#: After this many failed attempts a job is given up (and logged as an error).
MAX_ATTEMPTS = 10


class _LeaseLostError(Exception):
    """Another process took the job over: this attempt's replies must not be stored."""


@dataclass(frozen=True, slots=True)
class _Reply:
    """A job's replies, ready to be stored."""

    job: ClaimedReplyJob
    tenant_id: str
    conversation: common_pb2.Conversation
    inbound: common_pb2.Message
    session: common_pb2.Session
    outbound: list[common_pb2.Message]
    search_texts: list[str]
    now: dt.datetime
    #: The responder's context updates (applied to the session already).
    context_updates: dict[str, Any]


class ReplyWorker(LeasedQueueWorker[ClaimedReplyJob]):
    """Takes jobs from the reply queue, a few at a time."""

    def __init__(
        self,
        *,
        jobs: ReplyJobQueue,
        opener: ConversationOpener,
        composer: ReplyComposer,
        push: CommittedPush,
        conversations: ConversationRepository,
        messages: MessageRepository,
        outbox: Outbox,
        transactions: TransactionRunner,
        clock: Callable[[], dt.datetime],
        media: InboundMediaResolver | None = None,
        deliveries: DeliveryQueue | None = None,
        actions: PlatformActions | None = None,
        on_events: Callable[[], None] = lambda: None,
        on_delivery: Callable[[], None] = lambda: None,
        on_batch: Callable[[int], None] = lambda _size: None,
        concurrency: int = 8,
        delivery_slots: Callable[[int], Reservation[Delivery]] | None = None,
    ) -> None:
        """``delivery_slots`` reserves room in this process's delivery worker, which takes
        the deliveries queued for it leased (``on_delivery`` wakes it for the others)."""
        super().__init__(name="replies", concurrency=concurrency, lease=LEASE)
        self._media = media
        self._deliveries = deliveries
        self._actions = actions
        self._on_delivery = on_delivery
        self._delivery_slots = delivery_slots or (lambda _wanted: Reservation.none())
        self._jobs = jobs
        self._opener = opener
        self._composer = composer
        self._push = push
        self._conversations = conversations
        self._messages = messages
        # The jobs claimed together read their conversations, their messages and whether an
        # earlier job of theirs waits in one query each.
        self._conversation: Coalescer[tuple[str, str], common_pb2.Conversation] = Coalescer(
            conversations.get_many
        )
        self._message: Coalescer[tuple[str, str], common_pb2.Message] = Coalescer(messages.get_many)
        self._earlier: Coalescer[Position, bool] = Coalescer(jobs.earlier_waiting)
        self._outbox = outbox
        self._transactions = transactions
        self._clock = clock
        self._on_events = on_events
        self._commits: GroupCommit[_Reply, common_pb2.Conversation | None] = GroupCommit(
            self._store,
            key=lambda reply: (reply.tenant_id, reply.conversation.id),
            name="reply.store",
            on_batch=on_batch,
            on_orphan=self._finish_orphan,
            divisible=(_LeaseLostError,),
        )

    async def due(self, limit: int) -> list[Due]:
        return await self._jobs.due(now=self._clock(), limit=limit)

    async def claim_many(self, items: list[Due]) -> list[ClaimedReplyJob]:
        return await self._jobs.claim_many(items, owner=self._owner, now=self._clock(), lease=LEASE)

    async def renew(self, item: ClaimedReplyJob) -> ClaimedReplyJob | None:
        renewed = await self._jobs.renew(item, until=self._clock() + LEASE)
        return item if renewed else None

    async def give_back(self, items: list[ClaimedReplyJob]) -> None:
        for job in items:
            await self._jobs.postpone(job, due=self._clock(), counted=False)

    async def handle(self, item: ClaimedReplyJob) -> None:
        # Claimed by a loop of its own: the job's traceparent ties it to the call that stored
        # the message.
        with span("reply.job", parent=item.trace, attributes={"chat.attempt": item.attempts}):
            await self._process(item)

    async def _process(self, job: ClaimedReplyJob) -> None:
        try:
            await self.answer(job)
        except Exception as exc:
            if job.attempts >= MAX_ATTEMPTS:
                log.exception("reply given up", job_id=job.id)
                await self._drop(job)
            else:
                delay = dt.timedelta(seconds=min(60, 2**job.attempts))
                log.warning("reply failed; retrying", job_id=job.id, error=repr(exc))
                with contextlib.suppress(Exception):
                    await self._jobs.postpone(job, due=self._clock() + delay)

    async def answer(self, job: ClaimedReplyJob) -> None:
        """Generate and store the replies of one job (or give the job back, or drop it)."""
        tenant_id = job.tenant_id
        position = Position(tenant_id, job.conversation_id, job.sequence)
        conversation: common_pb2.Conversation | None
        inbound: common_pb2.Message | None
        if job.conversation is not None and job.message is not None:
            # Handed over by the ingest that stored them: only the queue is read, if that.
            earlier = await self._earlier_waits(position)
            conversation, inbound = job.conversation, job.message
        else:
            # Together, so that the jobs claimed with this one read theirs in the same queries.
            earlier, conversation, inbound = await asyncio.gather(
                self._earlier_waits(position),
                self._conversation.get((tenant_id, job.conversation_id)),
                self._message.get((tenant_id, job.message_id)),
            )
        if earlier:
            await self._hold(job)
            return
        if conversation is None or inbound is None:
            log.error("reply job for a missing message dropped", job_id=job.id)
            await self._drop(job)
            return
        if conversation.status != common_pb2.CONVERSATION_STATUS_ACTIVE:
            await self._drop(job)  # closed before the bot answered: nobody to answer
            return
        if self._actions is not None and inbound.platform_message_id:
            # The bot has read the message and is answering: the user sees both at once.
            self._actions.schedule(tenant_id, conversation, READ, inbound.platform_message_id)
            self._actions.schedule(tenant_id, conversation, TYPING, inbound.platform_message_id)
        if self._media is not None and await self._media.resolve(tenant_id, inbound):
            # The user's media, fetched from the platform and stored, before the bot answers.
            await self._messages.replace(tenant_id, inbound)
        now = self._clock()
        session = await self._opener.session_for(tenant_id, RESPONDER_ID, conversation, now=now)
        with span("reply.respond"):
            outbound, replies, context_updates = await self._composer.compose(
                tenant_id, conversation, inbound, session, now=now
            )
        reply = _Reply(
            job=job,
            tenant_id=tenant_id,
            conversation=conversation,
            inbound=inbound,
            session=session,
            outbound=outbound,
            search_texts=[reply.search_text for reply in replies],
            now=now,
            context_updates=context_updates,
        )
        try:
            updated = await self._commits.submit(reply)
        except _LeaseLostError:
            log.info("reply job taken over by another process", job_id=job.id)
            return
        if updated is not None:
            await self._after_commit(reply, updated)

    async def _earlier_waits(self, position: Position) -> bool:
        """Whether an earlier message of the conversation still waits for its reply. None can
        before a conversation's first message (a first contact's): no read for it."""
        if position.sequence <= 1:
            return False
        return bool(await self._earlier.get(position))  # None: no job of it waits

    async def _hold(self, job: ClaimedReplyJob) -> None:
        """Give back a job an earlier one of its conversation holds, until that one is done
        (which wakes it) rather than claiming it again every few hundred milliseconds: a user
        who sends sixteen messages at once would otherwise have fifteen jobs claimed, read and
        given back over and over while the first is answered."""
        await self._jobs.hold(job, until=self._clock() + REPLY_HOLD_AT_MOST)
        # The earlier job may have been done between the look and the hold: its wake then
        # found nothing held. Looking again after holding, one of the two sees the other.
        position = Position(job.tenant_id, job.conversation_id, job.sequence)
        try:
            waits = await self._earlier_waits(position)
        except Exception:  # noqa: BLE001 - not known: woken, it is claimed and looks again
            waits = False
        if not waits:
            await self._wake_behind([job])

    async def _drop(self, job: ClaimedReplyJob) -> None:
        if await self._jobs.drop(job):
            await self._wake_behind([job])

    async def _wake_behind(self, jobs: list[ClaimedReplyJob]) -> None:
        """Wake the next held job of each of these jobs' conversations, and this process's loop
        to claim it. Not done (the store failing now), the held jobs come due later by
        themselves (REPLY_HOLD_AT_MOST)."""
        try:
            woken = await self._jobs.wake_next(
                sorted({(job.tenant_id, job.conversation_id) for job in jobs}), now=self._clock()
            )
        except Exception as exc:  # noqa: BLE001 - the jobs are done; the held ones come later
            log.warning("held reply jobs not woken", error=repr(exc))
            return
        if woken:
            self.wake()

    async def _store(self, batch: list[_Reply]) -> list[common_pb2.Conversation | Exception | None]:
        """Store the replies of jobs of distinct conversations and remove the jobs, in one
        transaction: a bulk statement per collection, whatever their number (see GroupCommit).
        None for a job with nothing to send (no reply, or the conversation closed meanwhile).
        A conversation's lone reply is queued leased to this process's delivery worker while
        it has room, and handed to it with its message once committed (no poll, no claim, no
        read); the others are queued due, and the worker woken for them."""
        reservation = self._delivery_slots(len(batch))
        leased: list[Delivery] = []
        due = 0

        async def work(tx: Tx) -> list[common_pb2.Conversation | Exception | None]:
            nonlocal leased, due
            leased, due = [], 0
            if not await self._jobs.complete_many([r.job for r in batch], tx=tx):
                raise _LeaseLostError  # GroupCommit retries the batch one job at a time
            answering = [r for r in batch if r.outbound]
            states = await self._conversations.record_messages_many(
                [
                    Recording(r.tenant_id, r.conversation.id, 0, len(r.outbound), r.now)
                    for r in answering
                ],
                tx=tx,
            )
            stored: dict[int, common_pb2.Conversation] = {}
            rows: list[MessageRow] = []
            outgoing: list[Outgoing] = []
            events: list[events_pb2.EventEnvelope] = []
            for reply, updated in zip(answering, states, strict=True):
                if updated is None:
                    continue  # closed meanwhile: the job is done, with nothing to send
                stored[id(reply)] = updated
                first = updated.last_sequence - len(reply.outbound) + 1
                for offset, message in enumerate(reply.outbound):
                    message.sequence = first + offset
                rows += [
                    MessageRow(reply.tenant_id, message, text)
                    for message, text in zip(reply.outbound, reply.search_texts, strict=True)
                ]
                if updated.channel != common_pb2.CHANNEL_TYPE_WEB:
                    outgoing.append(
                        Outgoing(
                            reply.tenant_id,
                            reply.outbound,
                            updated.channel_conversation_id,
                            updated.metadata.get("service_url")
                            or reply.inbound.metadata.get("service_url", ""),
                            reply.now,
                        )
                    )
                events.append(
                    envelope(
                        tenant_id=reply.tenant_id,
                        actor_id=RESPONDER_ID,
                        conversation_id=updated.id,
                        now=reply.now,
                        conversation_updated=events_pb2.ConversationUpdated(conversation=updated),
                    )
                )
            if rows:
                await self._messages.insert_rows(rows, tx=tx)
            if outgoing and self._deliveries is not None:
                # Handed to the platform by the delivery queue, in this same transaction.
                leased = await self._deliveries.enqueue_many(
                    outgoing, tx=tx, leasing=reservation.leasing(self._clock())
                )
                due = sum(len(item.messages) for item in outgoing) - len(leased)
            if events:
                await self._outbox.add(events, now=max(r.now for r in batch), tx=tx)
            return [stored.get(id(reply)) for reply in batch]

        try:
            results = await self._transactions.run(work)
            # Handed over with the message as committed: the delivery worker does not read it.
            sent = {message.id: message for r in batch for message in r.outbound}
            reservation.hand_over([_knowing(delivery, sent[delivery.id]) for delivery in leased])
        finally:
            reservation.release()  # the room not handed over (all of it, when not committed)
        if due:
            self._on_delivery()
        await self._wake_behind([reply.job for reply in batch])
        return results

    async def _after_commit(self, reply: _Reply, updated: common_pb2.Conversation) -> None:
        """Wake the relay, push to the streams, keep the session."""
        self._on_events()
        await self._push.messages(
            reply.tenant_id,
            updated,
            reply.outbound,
            reply.session,
            now=reply.now,
            context_updates=reply.context_updates,
        )

    async def _finish_orphan(self, reply: _Reply, updated: common_pb2.Conversation | None) -> None:
        """Replies committed after their worker slot gave up (shutdown): still pushed."""
        if updated is None:
            return
        try:
            await self._after_commit(reply, updated)
        except Exception:
            log.exception("after-commit work failed", conversation_id=updated.id)


def _knowing(delivery: Delivery, message: common_pb2.Message) -> Delivery:
    """A delivery handed over with a copy of its message (the delivery worker's own)."""
    own = common_pb2.Message()
    own.CopyFrom(message)
    return dataclasses.replace(delivery, message=own)
