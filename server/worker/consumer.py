"""The consuming loop: read the chat topics in a consumer group, hand each event to the router,
dead-letter what cannot be handled, and commit offsets only after that.

Partitions are handled concurrently, each in order (one conversation's events share one), and
an offset is committed only once every record before it was handled or dead-lettered. A worker
that dies mid-batch loses nothing: its partitions move to another worker, which starts from
the last commit and redoes the rest; the handlers' applied-event records make that harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import structlog
from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from google.protobuf.message import DecodeError

from chat.v1 import events_pb2
from server.events.topics import DEAD_LETTER_TOPIC
from server.tracing.spans import CONSUMER, span, traceparent_in
from server.worker.router import EventRouter, Failure

log = structlog.get_logger("chat.worker.consumer")

_DLQ_RETRY_SECONDS = 1.0
_OUTAGE_PAUSE_SECONDS = 5.0


class ConsumerObserver(Protocol):
    """What the consumer reports (the worker's metrics and alerts)."""

    def dead_lettered(self, handler: str, event_type: str) -> None: ...

    def lags(self, behind: Mapping[tuple[str, int], int]) -> None:
        """The lag of each partition this worker holds now (and of no other)."""


class DeadLetterSink(Protocol):
    """Where dead letters are also counted (for alerts)."""

    async def record_dead_letter(
        self, tenant_id: str, *, handler: str, event_type: str, now: dt.datetime
    ) -> None: ...


#: How long a revocation waits for the batch in hand (the group's rebalance waits with it).
_REVOKE_WAIT_SECONDS = 20.0


class Handover:
    """Hands partitions over at a record boundary. The batch in hand runs under ``handling``;
    a revocation marks its partitions and waits for that lock, and the batch loop, seeing its
    partition marked, commits what it has handled and stops there. A rebalance so waits for one
    record a partition instead of a whole batch, and the next owner starts exactly where this
    worker stopped: two workers never handle one partition at once, and none redoes a record
    unless a worker dies, the wait runs out, or a commit fails because the broker has already
    moved the group on (the next owner then redoes what was handled since the last commit)."""

    def __init__(self, wait_seconds: float = _REVOKE_WAIT_SECONDS) -> None:
        self.handling = asyncio.Lock()
        self._wait_seconds = wait_seconds
        self._revoking: set[TopicPartition] = set()

    def revoking(self, tp: TopicPartition) -> bool:
        """Whether the batch loop is to stop before its next record of ``tp``."""
        return tp in self._revoking

    async def revoke(self, partitions: Sequence[TopicPartition]) -> bool:
        """Wait until no batch is in hand (False when that took too long)."""
        self._revoking.update(partitions)
        try:
            async with asyncio.timeout(self._wait_seconds):
                await self.handling.acquire()
        except TimeoutError:
            return False
        finally:
            self._revoking.difference_update(partitions)
        self.handling.release()
        return True


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Logs each assignment (which worker holds which partitions), and lets a revocation wait
    for the batch in hand to reach a record boundary (see ``Handover``)."""

    def __init__(self, handover: Handover) -> None:
        self._handover = handover

    async def on_partitions_revoked(self, revoked: Any) -> None:
        partitions = sorted(f"{p.topic}/{p.partition}" for p in revoked)
        if not await self._handover.revoke(list(revoked)):
            # A store down holds the batch (retries, then a pause): the whole group would wait
            # with it. The partitions go now; their new owner may handle some of these records
            # again, which the handlers' applied-event records make harmless.
            log.warning("partitions revoked with a batch still in hand", partitions=partitions)
            return
        log.info("partitions revoked", partitions=partitions)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info(
            "partitions assigned", partitions=sorted(f"{p.topic}/{p.partition}" for p in assigned)
        )


class EventConsumer:
    """One worker's share of the chat topics."""

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        group_id: str,
        topics: Sequence[str],
        router: EventRouter,
        observer: ConsumerObserver,
        sink: DeadLetterSink,
        session_timeout_seconds: float = 10.0,
        max_records: int = 200,
    ) -> None:
        self._session_timeout_ms = int(session_timeout_seconds * 1000)
        self._bootstrap = bootstrap_servers
        self._group_id = group_id
        self._topics = list(topics)
        self._router = router
        self._observer = observer
        self._sink = sink
        self._max_records = max_records
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._stop = asyncio.Event()
        self._handover = Handover()
        #: Lag per assigned partition ("topic/partition" -> events), as last measured.
        self.lag: dict[str, int] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then commit what was handled and leave the group (the
        batch in hand stops at its next record)."""
        self._stop = stop
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=self._group_id,
            client_id="chat-worker",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # A dead worker's partitions move to the others after this long.
            session_timeout_ms=self._session_timeout_ms,
            heartbeat_interval_ms=max(1000, self._session_timeout_ms // 3),
            max_poll_interval_ms=300_000,
        )
        self._consumer.subscribe(self._topics, listener=_Rebalance(self._handover))
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            client_id="chat-worker-dlq",
            acks="all",
            enable_idempotence=False,
        )
        await self._producer.start()
        try:
            await self._consumer.start()
            log.info("consuming", group=self._group_id, topics=self._topics)
            while not stop.is_set():
                batch = await self._consumer.getmany(timeout_ms=500, max_records=self._max_records)
                if batch:
                    async with self._handover.handling:
                        await asyncio.gather(
                            *(self._partition(tp, records) for tp, records in batch.items())
                        )
                await self._measure_lag()
        finally:
            await self._consumer.stop()
            await self._producer.stop()

    async def _partition(self, tp: TopicPartition, records: list[ConsumerRecord]) -> None:
        for record in records:
            if self._handover.revoking(tp) or self._stop.is_set():
                # Going to another worker (revoked, or this one stopping): it starts after the
                # last record handled here. A stop so waits for one record a partition, not a
                # batch of up to ``max_records`` (which, on a slow store, outlasts a grace period).
                await self._commit(tp, record.offset)
                return
            if not await self._record(record):
                # A store is down: commit what came before, come back to this record later.
                await self._commit(tp, record.offset)
                assert self._consumer is not None  # noqa: S101 - set by run
                self._consumer.seek(tp, record.offset)
                log.warning(
                    "a store is unreachable; pausing the partition",
                    partition=f"{tp.topic}/{tp.partition}",
                    offset=record.offset,
                    pause_seconds=_OUTAGE_PAUSE_SECONDS,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), _OUTAGE_PAUSE_SECONDS)
                return
        await self._commit(tp, records[-1].offset + 1)

    async def _commit(self, tp: TopicPartition, offset: int) -> None:
        assert self._consumer is not None  # noqa: S101 - set by run
        try:
            await self._consumer.commit({tp: offset})
        except (CommitFailedError, IllegalStateError) as exc:
            # The partition moved to another worker meanwhile; it redoes these (idempotently).
            log.info("commit skipped: partition reassigned", partition=str(tp), error=repr(exc))

    async def _record(self, record: ConsumerRecord) -> bool:
        """Handle one record; False when a store outage stopped it (nothing dead-lettered
        for that: the record is to be handled again). Traced as a continuation of the call
        that wrote the event (the record's traceparent header)."""
        with span(
            "worker.handle",
            parent=traceparent_in(record.headers),
            kind=CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.destination.name": record.topic,
                "messaging.kafka.offset": record.offset,
            },
        ):
            return await self._handle_record(record)

    async def _handle_record(self, record: ConsumerRecord) -> bool:
        value: bytes = record.value or b""
        try:
            envelope = events_pb2.EventEnvelope.FromString(value)
        except DecodeError as exc:
            await self._dead_letter(record, None, Failure("", f"undecodable: {exc}", 0))
            return True
        if envelope.WhichOneof("payload") is None or not envelope.event_id:
            await self._dead_letter(
                record, envelope, Failure("", "undecodable: no payload or event id", 0)
            )
            return True
        failures = await self._router.dispatch(envelope)
        for failure in failures:
            if not failure.outage:
                await self._dead_letter(record, envelope, failure)
        return not any(failure.outage for failure in failures)

    async def _dead_letter(
        self,
        record: ConsumerRecord,
        envelope: events_pb2.EventEnvelope | None,
        failure: Failure,
    ) -> None:
        event_type = (envelope.WhichOneof("payload") if envelope else None) or ""
        letter = events_pb2.DeadLetter(
            original_value=record.value or b"",
            original_key=record.key or b"",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            handler=failure.handler,
            error=failure.error,
            attempts=failure.attempts,
            event_id=envelope.event_id if envelope else "",
            tenant_id=envelope.tenant_id if envelope else "",
            event_type=event_type,
        )
        now = dt.datetime.now(dt.UTC)
        letter.dead_time.FromDatetime(now)
        assert self._producer is not None  # noqa: S101 - set by run
        # The offset is committed only after this succeeds: keep trying rather than lose it.
        while True:
            try:
                await self._producer.send_and_wait(
                    DEAD_LETTER_TOPIC, letter.SerializeToString(), key=record.key
                )
                break
            except KafkaError as exc:
                if not exc.retriable and letter.original_value:
                    # Too large for the broker with its wrapping: keep where it was instead
                    # (topic, partition, offset), which is enough to find it again.
                    letter.original_value = b""
                    letter.error += f" (original value dropped from the dead letter: {exc!r})"
                    continue
                if self._stop.is_set():
                    raise  # not committed: the next owner of the partition redoes it
                log.warning("dead letter not written yet; retrying", error=repr(exc))
                await asyncio.sleep(_DLQ_RETRY_SECONDS)
        log.error(
            "event dead-lettered",
            handler=failure.handler,
            event_type=event_type,
            event_id=letter.event_id,
            topic=record.topic,
            offset=record.offset,
            error=failure.error,
        )
        self._observer.dead_lettered(failure.handler, event_type)
        try:
            await self._sink.record_dead_letter(
                letter.tenant_id, handler=failure.handler, event_type=event_type, now=now
            )
        except Exception:
            log.exception("dead letter not counted for alerts")

    async def _measure_lag(self) -> None:
        """Lag per assigned partition: the high watermark of the last fetch minus the next
        offset to consume (both known locally: no extra round trip)."""
        assert self._consumer is not None  # noqa: S101 - set by run
        lag: dict[str, int] = {}
        held: dict[tuple[str, int], int] = {}
        for tp in self._consumer.assignment():
            highwater = self._consumer.highwater(tp)
            if highwater is None:
                continue
            try:
                position = await self._consumer.position(tp)
            except IllegalStateError:
                continue  # revoked meanwhile
            behind = max(0, highwater - position)
            lag[f"{tp.topic}/{tp.partition}"] = behind
            held[(tp.topic, tp.partition)] = behind
        # The whole set: a partition given to another worker is no longer this one's to report
        # (its last figure, kept, would be summed with the new owner's).
        self._observer.lags(held)
        self.lag = lag
