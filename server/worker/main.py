"""``chat-worker``: the event consumer process, and ``chat-worker replay-dlq``.

Run one or many: they share the chat topics' partitions through the consumer group
(CHAT_WORKER_GROUP). Each event goes to its handlers (analytics, audit, notification, cache);
what fails after its retries goes to the dead-letter topic, and ``replay-dlq`` sends dead
letters back to their topics once the cause is fixed (the handlers that had applied them
skip them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import sys
from collections.abc import Callable, Mapping, Sequence

import structlog
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from google.protobuf.message import DecodeError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from chat.v1 import events_pb2
from server.clients import open_clients
from server.events.topics import ALL_TOPICS, DEAD_LETTER_TOPIC
from server.log import configure_logging
from server.metrics import serve_registry
from server.repositories.analytics import MongoAnalytics
from server.repositories.audit import MongoAuditLog
from server.repositories.conversation_cache import RedisConversationCache
from server.repositories.handled import MongoHandledEvents
from server.repositories.mongo import Transactions, create_indexes
from server.repositories.users import MongoUserRepository
from server.settings import Settings, SettingsError
from server.stopping import stop_on_signals
from server.tracing.setup import configure_tracing
from server.worker.consumer import EventConsumer
from server.worker.handlers import (
    AnalyticsHandler,
    AuditHandler,
    CacheHandler,
    NotificationHandler,
    UserActivityHandler,
    registrations,
)
from server.worker.notifier import Notifier
from server.worker.router import EventRouter, Registration, RetryPolicy

log = structlog.get_logger("chat.worker")

#: The topics the worker consumes: every chat topic but the dead letters.
CONSUMED_TOPICS = tuple(topic for topic in ALL_TOPICS if topic != DEAD_LETTER_TOPIC)
_LAG_CHECK_SECONDS = 30.0
#: Dead letters older than this are not replayed: the handlers' applied-event records
#: (kept 30 days) may be gone, and a replay could apply an event twice.
REPLAY_HORIZON = dt.timedelta(days=29)


class WorkerMetrics:
    """Events handled, failed and dead-lettered, handler timings and consumer lag."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._handled = Counter(
            "chat_worker_events_handled",
            "Events a handler applied (or found already applied).",
            ["handler", "event_type"],
            registry=self.registry,
        )
        self._failed = Counter(
            "chat_worker_handler_failures",
            "Failed handler attempts (retried or dead-lettered).",
            ["handler", "event_type"],
            registry=self.registry,
        )
        self._dead = Counter(
            "chat_worker_events_dead_lettered",
            "Events sent to the dead-letter topic, by handler (empty: undecodable).",
            ["handler", "event_type"],
            registry=self.registry,
        )
        self._seconds = Histogram(
            "chat_worker_handler_seconds",
            "Time a handler took for one event, in seconds.",
            ["handler"],
            registry=self.registry,
        )
        self._lag = Gauge(
            "chat_worker_consumer_lag_records",
            "Records not yet consumed by the group, per topic and partition.",
            ["topic", "partition"],
            registry=self.registry,
        )
        #: The partitions whose lag is exported (those this worker held at the last look).
        self._lagging: set[tuple[str, int]] = set()

    def handled(self, handler: str, event_type: str, seconds: float) -> None:
        self._handled.labels(handler, event_type).inc()
        self._seconds.labels(handler).observe(seconds)

    def failed(self, handler: str, event_type: str) -> None:
        self._failed.labels(handler, event_type).inc()

    def dead_lettered(self, handler: str, event_type: str) -> None:
        self._dead.labels(handler, event_type).inc()

    def lags(self, behind: Mapping[tuple[str, int], int]) -> None:
        for topic, partition in self._lagging - behind.keys():
            self._lag.remove(topic, str(partition))
        for (topic, partition), records in behind.items():
            self._lag.labels(topic, str(partition)).set(records)
        self._lagging = set(behind)


async def run(
    settings: Settings,
    *,
    stop: asyncio.Event,
    extra: Sequence[Registration] = (),
    metrics: WorkerMetrics | None = None,
) -> None:
    """Consume until ``stop`` is set. ``extra`` registers more handlers (tests)."""
    metrics = metrics or WorkerMetrics()
    clients = await open_clients(settings, needs_tenants=False)
    transactions = Transactions(client=clients.mongo)
    analytics = MongoAnalytics(database=clients.database)
    handled = MongoHandledEvents(database=clients.database, transactions=transactions)
    notifier = Notifier(
        database=clients.database, analytics=analytics, settings=settings.worker.alerts
    )
    router = EventRouter(
        [
            *registrations(
                analytics=AnalyticsHandler(analytics=analytics, handled=handled),
                users=UserActivityHandler(
                    users=MongoUserRepository(database=clients.database), handled=handled
                ),
                audit=AuditHandler(audit=MongoAuditLog(database=clients.database), handled=handled),
                notification=NotificationHandler(notifier=notifier),
                cache=CacheHandler(cache=RedisConversationCache(client=clients.redis)),
            ),
            *extra,
        ],
        retry=RetryPolicy(
            attempts=settings.worker.retry_attempts,
            base_delay_seconds=settings.worker.retry_base_delay_seconds,
        ),
        observer=metrics,
    )
    consumer = EventConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.worker.group_id,
        topics=CONSUMED_TOPICS,
        router=router,
        observer=metrics,
        sink=notifier,
        session_timeout_seconds=settings.worker.session_timeout_seconds,
    )
    runner: web.AppRunner | None = None
    lag_task: asyncio.Task[None] | None = None
    try:
        await create_indexes(clients.database)
        if settings.worker.metrics_address:
            runner = await serve_registry(metrics.registry, settings.worker.metrics_address)
        lag_task = asyncio.create_task(_watch_lag(consumer, notifier, stop))
        await consumer.run(stop)
    finally:
        if lag_task is not None:
            lag_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lag_task
        if runner is not None:
            await runner.cleanup()
        await notifier.close()
        await clients.close()
        log.info("worker stopped")


async def _watch_lag(consumer: EventConsumer, notifier: Notifier, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), _LAG_CHECK_SECONDS)
        try:
            await notifier.check_lag(consumer.lag, now=dt.datetime.now(dt.UTC))
        except Exception:
            log.exception("lag check failed")


async def replay_dead_letters(
    bootstrap_servers: str,
    *,
    tenant_id: str = "",
    handler: str = "",
    event_type: str = "",
    since: dt.datetime | None = None,
    dry_run: bool = False,
) -> int:
    """Send the matching dead letters back to their original topics; returns how many.

    Reads the dead-letter topic from its start up to its end as of now, without a consumer
    group, so a dead letter can be replayed again (harmless: handlers skip what they applied).
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, enable_auto_commit=False, client_id="chat-replay"
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers, acks="all", enable_idempotence=False
    )
    await consumer.start()
    await producer.start()
    replayed = 0
    try:
        await consumer.topics()  # fetches the cluster's metadata
        partitions = [
            TopicPartition(DEAD_LETTER_TOPIC, p)
            for p in sorted(consumer.partitions_for_topic(DEAD_LETTER_TOPIC) or ())
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        oldest = dt.datetime.now(dt.UTC) - REPLAY_HORIZON
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(timeout_ms=1000)
            for tp, records in batch.items():
                for record in records:
                    if record.offset >= ends[tp]:
                        break  # arrived after the replay began
                    replayed += await _replay_one(
                        producer,
                        record.value or b"",
                        oldest=oldest,
                        matches=lambda letter: _matches(
                            letter, tenant_id, handler, event_type, since
                        ),
                        dry_run=dry_run,
                    )
    finally:
        await producer.stop()
        await consumer.stop()
    return replayed


async def _replay_one(
    producer: AIOKafkaProducer,
    value: bytes,
    *,
    oldest: dt.datetime,
    matches: Callable[[events_pb2.DeadLetter], bool],
    dry_run: bool,
) -> int:
    """Send one dead letter back if it matches; returns 1 when it did (or would)."""
    try:
        letter = events_pb2.DeadLetter.FromString(value)
    except DecodeError:
        log.warning("undecodable dead letter skipped")
        return 0
    if not matches(letter):
        return 0
    if letter.dead_time.ToDatetime(tzinfo=dt.UTC) < oldest:
        # Its handlers may have forgotten they applied it: replaying could count it twice.
        log.warning("dead letter too old to replay safely", event_id=letter.event_id)
        return 0
    if not letter.original_value:
        log.warning("dead letter without its original value", event_id=letter.event_id)
        return 0
    if not dry_run:
        await producer.send_and_wait(
            letter.topic, letter.original_value, key=letter.original_key or None
        )
    log.info(
        "dead letter replayed" if not dry_run else "dead letter matches",
        topic=letter.topic,
        event_id=letter.event_id,
        handler=letter.handler,
    )
    return 1


def _matches(
    letter: events_pb2.DeadLetter,
    tenant_id: str,
    handler: str,
    event_type: str,
    since: dt.datetime | None,
) -> bool:
    if not letter.topic:
        return False  # nowhere to send it back
    if tenant_id and letter.tenant_id != tenant_id:
        return False
    if handler and letter.handler != handler:
        return False
    if event_type and letter.event_type != event_type:
        return False
    return since is None or letter.dead_time.ToDatetime(tzinfo=dt.UTC) >= since


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chat-worker", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    replay = commands.add_parser("replay-dlq", help="send dead letters back to their topics")
    replay.add_argument("--tenant", default="", help="only this tenant's dead letters")
    replay.add_argument("--handler", default="", help="only those of this handler")
    replay.add_argument("--event-type", default="", help="only this payload type")
    replay.add_argument(
        "--since", type=dt.datetime.fromisoformat, help="only those dead-lettered since (ISO)"
    )
    replay.add_argument("--dry-run", action="store_true", help="list, do not send")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``chat-worker``."""
    arguments = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        sys.exit(f"chat-worker: {exc}")
    configure_logging(log_format=settings.log_format, level=settings.log_level)
    if arguments.command == "replay-dlq":
        since = arguments.since
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=dt.UTC)
        count = asyncio.run(
            replay_dead_letters(
                settings.kafka_bootstrap,
                tenant_id=arguments.tenant,
                handler=arguments.handler,
                event_type=arguments.event_type,
                since=since,
                dry_run=arguments.dry_run,
            )
        )
        print(f"{'matched' if arguments.dry_run else 'replayed'} {count} dead letters")  # noqa: T201
        return
    try:
        configure_tracing(service_name="chat-worker")
    except SettingsError as exc:
        sys.exit(f"chat-worker: {exc}")

    async def serve() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop, grace_seconds=settings.shutdown_grace_seconds)
        await run(settings, stop=stop)

    asyncio.run(serve())
