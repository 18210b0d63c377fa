"""Outbound delivery: takes queued messages to their platform, with retries, pacing, a circuit
breaker per tenant and channel, and a dead-letter state.

A delivery is claimed with a lease and its outcome recorded with the message's status in one
transaction. Transient failures (429 with Retry-After, 5xx, timeouts, the platform's rate
codes) come back later with exponential backoff and jitter; permanent ones (an invalid
recipient, outside WhatsApp's 24-hour window, a blocked bot, a message too big) fail at once.
After the last attempt the delivery is FAILED with its history: ListFailedDeliveries and
RetryDelivery show and replay them.

Platforms offer no idempotency key for sends, so one gap remains: a process that dies after the
platform accepted a message and before the outcome is recorded leaves a lease that lapses, and
the message is sent again. Everything else is exactly once: the message id keys its delivery.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Callable

import structlog

from chat.v1 import chat_service_pb2, common_pb2
from server.channels.base import HOLD_DESTINATION, Channel, ChannelResponse, Outbound
from server.channels.factory import ChannelFactory
from server.domain.clock import as_stored
from server.domain.errors import StoreError
from server.domain.limits import Limit, limit_key
from server.domain.messages import Advance
from server.domain.queues import (
    FAILED,
    SENT,
    Attempt,
    Delivery,
    Due,
    Finish,
    Position,
    Waiting,
    earlier_clears,
)
from server.domain.receipts import ReceiptRef
from server.domain.tenant import TenantLookup
from server.processors.media import MediaStore
from server.services.coalescing import Coalescer
from server.services.delivery_guards import (
    PACING,
    CircuitBreaker,
    DeliveryObserver,
    DeliveryPolicy,
    NoObserver,
    RateHolds,
)
from server.services.delivery_outcome import (
    Outcome,
    Recorded,
    delivery_problem,
    outcome_event,
    receipt_ref_of,
)
from server.services.group_commit import GroupCommit
from server.services.live import QuietLiveEvents, timestamp_of
from server.services.ports import (
    DeliveryQueue,
    MessageRepository,
    Outbox,
    RateLimiter,
    TransactionRunner,
    Tx,
)
from server.services.queue_worker import LeasedQueueWorker
from server.services.receipts import Receipts, StatusChange
from server.tracing.spans import span

log = structlog.get_logger("chat.delivery")

_IN_ORDER_RETRY = dt.timedelta(milliseconds=200)


class _LeaseLostError(Exception):
    """Another process took the delivery over: this attempt's outcome must not be recorded."""


class DeliveryWorker(LeasedQueueWorker[Delivery]):
    """Takes deliveries from the queue, a few at a time."""

    def __init__(
        self,
        *,
        deliveries: DeliveryQueue,
        messages: MessageRepository,
        media: MediaStore,
        channels: ChannelFactory,
        tenants: TenantLookup,
        outbox: Outbox,
        transactions: TransactionRunner,
        live: QuietLiveEvents,
        pacer: RateLimiter,
        clock: Callable[[], dt.datetime],
        policy: DeliveryPolicy | None = None,
        on_events: Callable[[], None] = lambda: None,
        on_batch: Callable[[int], None] = lambda _size: None,
        concurrency: int = 16,
        holds: RateHolds | None = None,
        receipts: Receipts | None = None,
        observer: DeliveryObserver | None = None,
    ) -> None:
        policy = policy or DeliveryPolicy()
        super().__init__(
            name="deliveries",
            concurrency=concurrency,
            lease=dt.timedelta(seconds=policy.lease_seconds),
        )
        self._observer = observer = observer or NoObserver()
        self._deliveries = deliveries
        self._messages = messages
        # The deliveries claimed together read their messages, and whether an earlier one
        # of their conversation waits, in one query each.
        self._message: Coalescer[tuple[str, str], common_pb2.Message] = Coalescer(messages.get_many)
        self._earlier: Coalescer[Position, Waiting] = Coalescer(deliveries.first_waiting_before)
        self._media = media
        self._channels = channels
        self._tenants = tenants
        self._outbox = outbox
        self._transactions = transactions
        self._live = live
        self._pacer = pacer
        self._clock = clock
        self._policy = policy
        self._on_events = on_events
        self._breaker = CircuitBreaker(
            threshold=policy.breaker_threshold,
            open_seconds=policy.breaker_open_seconds,
            on_open=observer.breaker_opened,
        )
        #: Rate limits the platforms reported; queued deliveries are held in MongoDB too, for
        #: every process.
        self._holds = holds or RateHolds()
        #: Receipts that arrived before an outcome was recorded are applied after it.
        self._receipts = receipts
        self._outcomes: GroupCommit[Outcome, Recorded] = GroupCommit(
            self._record,
            key=lambda o: (o.delivery.tenant_id, o.delivery.conversation_id),
            name="delivery.record",
            on_batch=on_batch,
            on_orphan=self._finish_orphan,
            divisible=(_LeaseLostError,),
        )

    def open_breakers(self) -> dict[int, int]:
        """Breakers of this process not closed, by channel (the metrics read it)."""
        return self._breaker.open_counts()

    async def due(self, limit: int) -> list[Due]:
        return await self._deliveries.due(now=self._clock(), limit=limit)

    async def claim_many(self, items: list[Due]) -> list[Delivery]:
        return await self._deliveries.claim_many(
            items, owner=self._owner, now=self._clock(), lease=self._lease
        )

    async def renew(self, item: Delivery) -> Delivery | None:
        until = as_stored(self._clock() + self._lease)
        renewed = await self._deliveries.renew(item, until=until)
        return dataclasses.replace(item, due_time=until) if renewed else None

    async def give_back(self, items: list[Delivery]) -> None:
        for delivery in items:
            await self._deliveries.postpone(delivery, due=self._clock())

    async def handle(self, item: Delivery) -> None:
        # Claimed by a loop of its own: the delivery's traceparent ties the platform's HTTP
        # call to the call or reply that queued it.
        with span(
            "delivery.send",
            parent=item.trace,
            attributes={"chat.channel": item.channel, "chat.attempt": item.budget_used + 1},
        ):
            await self.deliver(item)

    async def deliver(self, delivery: Delivery) -> None:
        """One attempt at one delivery."""
        tenant_id = delivery.tenant_id
        # An earlier message of the conversation waiting for its retry holds this one until
        # then, not in a loop of claims every _IN_ORDER_RETRY.
        position = Position(tenant_id, delivery.conversation_id, delivery.sequence)
        message: common_pb2.Message | None
        if delivery.message is not None:
            # Handed over by the reply that stored it: only the queue is read.
            first, message = await self._earlier.get(position), delivery.message
        else:
            # Together, so that the deliveries claimed with this one read theirs in one query.
            first, message = await asyncio.gather(
                self._earlier.get(position), self._message.get((tenant_id, delivery.id))
            )
        later = earlier_clears(first, now=self._clock(), soon=_IN_ORDER_RETRY)
        if later is not None:
            await self._deliveries.postpone(delivery, due=later)
            self._observer.delivery_outcome(delivery.channel, "postponed")
            return
        tenant = self._tenants.get(tenant_id)
        channel = self._channels.get(delivery.channel)
        problem = (
            "the tenant, message or channel is gone"
            if tenant is None or message is None or channel is None
            else delivery_problem(channel, tenant, delivery.recipient_id, message)
        )
        if problem or tenant is None or message is None or channel is None:
            failure = ChannelResponse.failed("INVALID_DELIVERY", problem, retryable=False)
            await self._finish(delivery, message, failure)
            return
        breaker_key = (tenant_id, delivery.channel)
        wait = await self._wait_seconds(delivery, breaker_key)
        if wait > 0:
            await self._deliveries.postpone(
                delivery, due=self._clock() + dt.timedelta(seconds=wait)
            )
            self._observer.delivery_outcome(delivery.channel, "postponed")
            return
        media = None
        if message.content.WhichOneof("kind") == "media" and message.content.media.media_id:
            found = await self._media.get(tenant_id, message.content.media.media_id)
            media = found[1] if found else None
        response = await self._send(
            channel,
            Outbound(
                tenant=tenant,
                message=message,
                recipient_id=delivery.recipient_id,
                service_url=delivery.service_url,
                media=media,
                skip_parts=delivery.parts_sent,
            ),
            delivery,
        )
        if response.success:
            self._breaker.success(breaker_key)
            await self._finish(delivery, message, response)
            return
        error = response.error or common_pb2.PlatformError(code="UNKNOWN", retryable=True)
        attempts = delivery.budget_used + 1
        if error.retryable:
            self._breaker.failure(breaker_key)
        else:
            self._breaker.success(breaker_key)  # the platform answered; the message was bad
        delay = self._policy.delay(attempts, response.retry_after)
        if response.hold:
            # Even on its last attempt: the limit still holds the others it covers.
            await self._hold(delivery, response.hold, delay, until=self._clock())
        if error.retryable and attempts < self._policy.max_attempts:
            now = self._clock()
            log.warning(
                "delivery failed; retrying",
                message_id=delivery.id,
                attempt=attempts,
                code=error.code,
                delay_seconds=round(delay, 2),
            )
            await self._deliveries.retry_later(
                delivery,
                Attempt(time=now, success=False, error=error),
                due=now + dt.timedelta(seconds=delay),
                now=now,
                parts_sent=max(response.parts_sent, delivery.parts_sent),
                first_platform_id=response.platform_message_id,
            )
            self._observer.delivery_outcome(delivery.channel, "retried")
            return
        await self._finish(delivery, message, response)

    async def _wait_seconds(self, delivery: Delivery, breaker_key: tuple[str, int]) -> float:
        """How long this delivery must wait (0: send now): an open breaker, a rate limit the
        platform reported, or this destination's pacing."""
        wait = self._breaker.wait_seconds(breaker_key)
        if wait > 0:
            return wait
        wait = self._held(delivery) or await self._paced(delivery)
        if wait > 0:
            self._breaker.release(breaker_key)  # a probe that did not go: no verdict
        return wait

    def _held(self, delivery: Delivery) -> float:
        """Seconds a reported rate limit still holds this delivery (0: none)."""
        return self._holds.seconds(delivery.tenant_id, delivery.channel, delivery.recipient_id)

    async def _hold(
        self, delivery: Delivery, scope: str, seconds: float, *, until: dt.datetime
    ) -> None:
        """The platform limited more than this delivery: the rest it covers waits as long."""
        tenant_id, channel = delivery.tenant_id, delivery.channel
        recipient = delivery.recipient_id if scope == HOLD_DESTINATION else ""
        self._holds.hold(tenant_id, channel, recipient, seconds)
        self._observer.delivery_held(channel, scope)
        held = await self._deliveries.hold(
            tenant_id,
            channel,
            recipient_id=recipient or None,
            until=until + dt.timedelta(seconds=seconds),
        )
        log.warning(
            "rate limited by the platform; holding",
            tenant_id=tenant_id,
            channel=channel,
            scope=scope,
            seconds=round(seconds, 2),
            held=held,
        )

    async def _send(
        self, channel: Channel, outbound: Outbound, delivery: Delivery
    ) -> ChannelResponse:
        """One send through the adapter; an adapter's own crash is a failed attempt (so it
        counts, and ends in FAILED), never a loop of lapsed leases."""
        try:
            response = await channel.send_message(outbound)
        except Exception as exc:
            log.exception("channel adapter failed", message_id=delivery.id)
            response = ChannelResponse.failed("ADAPTER_ERROR", type(exc).__name__, retryable=True)
            response.parts_sent = outbound.skip_parts
        if response.parts_sent:
            # Parts sent before a failure are not sent again; the first one names the message.
            response.platform_message_id = (
                delivery.first_platform_id or response.platform_message_id
            )
        return response

    async def _paced(self, delivery: Delivery) -> float:
        """Seconds to wait before this destination and account may get another message
        (0: go)."""
        pace = PACING.get(delivery.channel)
        if pace is None:
            return 0.0
        tenant_id, channel = delivery.tenant_id, delivery.channel
        limits = []
        if pace.destination is not None:
            per_second, burst = pace.destination
            key = limit_key(tenant_id, "pace", f"{channel}:{delivery.recipient_id}")
            limits.append(Limit(key=key, per_second=per_second, burst=burst, subject="destination"))
        if pace.account is not None:
            per_second, burst = pace.account
            key = limit_key(tenant_id, "pace-account", str(channel))
            limits.append(Limit(key=key, per_second=per_second, burst=burst, subject="account"))
        try:
            decision = await self._pacer.check(tuple(limits))
        except StoreError:
            return 0.0  # pacing is a courtesy; the platform's own 429 still holds us back
        return 0.0 if decision.allowed else decision.retry_after_seconds

    async def _finish(
        self,
        delivery: Delivery,
        message: common_pb2.Message | None,
        response: ChannelResponse,
    ) -> None:
        now = self._clock()
        outcome = Outcome(
            delivery=delivery,
            message=message,
            response=response,
            status=common_pb2.DELIVERY_STATUS_SENT
            if response.success
            else common_pb2.DELIVERY_STATUS_FAILED,
            now=now,
        )
        if not response.success:
            # A warning, not an error: the platform refused it or the tenant cannot send on
            # the channel (a caller's doing, as often as not); ListFailedDeliveries and the
            # delivery metrics hold every one for the operator to retry.
            log.warning(
                "delivery failed for good",
                message_id=delivery.id,
                error=response.error.code if response.error else "",
            )
        try:
            changed = await self._outcomes.submit(outcome)
        except _LeaseLostError:
            return  # another process has the delivery now and records its own outcome
        self._observer.delivery_outcome(delivery.channel, "sent" if response.success else "failed")
        await self._recorded(outcome, changed)

    async def _record(self, batch: list[Outcome]) -> list[Recorded | Exception]:
        """Record the outcomes of deliveries of distinct conversations in one transaction: the
        deliveries' final states, the messages' statuses and the events, a bulk statement per
        collection (see GroupCommit), with the receipts the platforms sent before it. For
        each, the messages whose status moved and the receipts applied."""
        refs = [ref for ref in map(receipt_ref_of, batch) if ref is not None]

        async def work(tx: Tx) -> list[Recorded | Exception]:
            finishes = [
                Finish(
                    delivery=o.delivery,
                    attempt=Attempt(
                        time=o.now,
                        success=o.response.success,
                        platform_message_id=o.response.platform_message_id,
                        error=o.response.error,
                    ),
                    state=SENT if o.response.success else FAILED,
                    now=o.now,
                    platform_message_id=o.response.platform_message_id,
                )
                for o in batch
            ]
            if not await self._deliveries.finish_many(finishes, tx=tx):
                raise _LeaseLostError  # GroupCommit records the batch one outcome at a time
            with_message = [(o, o.message) for o in batch if o.message is not None]
            changed = await self._messages.advance_many(
                [
                    Advance(o.delivery.tenant_id, m.id, o.status, o.response.platform_message_id)
                    for o, m in with_message
                ],
                tx=tx,
            )
            if with_message:
                await self._outbox.add(
                    [outcome_event(o, m) for o, m in with_message],
                    now=max(o.now for o in batch),
                    tx=tx,
                )
            early = (
                await self._receipts.take_and_apply(refs, now=self._clock(), tx=tx)
                if self._receipts is not None and refs
                else []
            )
            moved = {m.id: m for m in changed}
            return [
                Recorded(
                    changed=[moved[o.message.id]]
                    if o.message is not None and o.message.id in moved
                    else [],
                    receipts=[
                        c
                        for _, c in early
                        if o.message is not None and c.message.id == o.message.id
                    ],
                )
                for o in batch
            ]

        recorded = await self._transactions.run(work)
        # A receipt parked while this transaction ran was not in its snapshot: looked for
        # again now that the outcome is committed (the ingest looks for the message after
        # parking, so one of the two finds the other).
        late = await self._settle_late(refs)
        for o, result in zip(batch, recorded, strict=True):
            if isinstance(result, Recorded) and o.message is not None:
                result.receipts.extend(c for c in late if c.message.id == o.message.id)
        return recorded

    async def _settle_late(self, refs: list[ReceiptRef]) -> list[StatusChange]:
        if self._receipts is None or not refs:
            return []
        try:
            return [change for _, change in await self._receipts.settle(refs, now=self._clock())]
        except Exception:
            # They stay parked; the platform's later receipts still move the status.
            log.exception("early receipts not applied", receipts=len(refs))
            return []

    async def _recorded(self, outcome: Outcome, recorded: Recorded) -> None:
        """After the commit: wake the relay, push the new statuses to the streams (the send's
        outcome first, then the receipts that came before it)."""
        if outcome.message is not None:
            self._on_events()
        tenant_id = outcome.delivery.tenant_id
        if recorded.changed:
            await self._live.publish(
                tenant_id,
                outcome.delivery.conversation_id,
                [
                    chat_service_pb2.StreamConversationEventsResponse(
                        event_time=timestamp_of(outcome.now),
                        delivery_status=chat_service_pb2.DeliveryStatusUpdate(
                            message_id=m.id,
                            sequence=m.sequence,
                            status=outcome.status,
                            error=outcome.response.error,
                        ),
                    )
                    for m in recorded.changed
                ],
            )
        if recorded.receipts and self._receipts is not None:
            await self._receipts.publish(tenant_id, recorded.receipts)

    async def _finish_orphan(self, outcome: Outcome, changed: Recorded) -> None:
        """An outcome recorded after its worker slot gave up (shutdown): still pushed."""
        try:
            await self._recorded(outcome, changed)
        except Exception:
            log.exception("after-commit work failed", message_id=outcome.delivery.id)
