"""The queue sampler: gauges from a backlog reader; a reader that fails or hangs is a counted,
logged miss that leaves the last values; and the breaker's counts the metrics read."""

from __future__ import annotations

import asyncio
import datetime as dt

from structlog.testing import capture_logs

from server.backlog_sampler import BacklogSampler
from server.domain.backlog import DELIVERY, OUTBOX, REPLY, Backlog
from server.domain.errors import StoreUnavailableError
from server.metrics import Metrics
from server.services.delivery_guards import CircuitBreaker

NOW = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)


class Reader:
    """Answers what it is given, raises what it is given, or never answers."""

    def __init__(self) -> None:
        self.answer: list[Backlog] = []
        self.error: Exception | None = None
        self.hang = False

    async def backlogs(self) -> list[Backlog]:
        if self.hang:
            await asyncio.Event().wait()
        if self.error is not None:
            raise self.error
        return self.answer


def gauge(metrics: Metrics, name: str, queue: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"queue": queue})


async def test_a_sample_sets_items_and_the_oldest_age() -> None:
    metrics, reader = Metrics(), Reader()
    reader.answer = [
        Backlog(OUTBOX, 3, NOW - dt.timedelta(seconds=42)),
        # PyMongo without tz_aware gives naive UTC: read as UTC, not as local time.
        Backlog(REPLY, 1, (NOW - dt.timedelta(seconds=5)).replace(tzinfo=None)),
        Backlog(DELIVERY, 0, None),
    ]
    sampler = BacklogSampler(reader=reader, metrics=metrics, clock=lambda: NOW)
    assert await sampler.sample()
    assert gauge(metrics, "chat_queue_items", OUTBOX) == 3
    assert gauge(metrics, "chat_queue_oldest_age_seconds", OUTBOX) == 42
    assert gauge(metrics, "chat_queue_oldest_age_seconds", REPLY) == 5
    assert gauge(metrics, "chat_queue_items", DELIVERY) == 0
    assert gauge(metrics, "chat_queue_oldest_age_seconds", DELIVERY) == 0


async def test_a_failed_or_hung_sample_is_counted_and_keeps_the_last_values() -> None:
    metrics, reader = Metrics(), Reader()
    reader.answer = [Backlog(OUTBOX, 7, NOW - dt.timedelta(seconds=1))]
    sampler = BacklogSampler(
        reader=reader, metrics=metrics, clock=lambda: NOW, timeout_seconds=0.05
    )
    assert await sampler.sample()
    reader.error = StoreUnavailableError("backlog not read: ServerSelectionTimeoutError")
    with capture_logs() as logs:
        assert not await sampler.sample()
    assert logs[0]["log_level"] == "warning"
    assert logs[0]["error"] == "StoreUnavailableError"
    reader.hang = True
    assert not await sampler.sample()
    assert metrics.registry.get_sample_value("chat_queue_sample_failures_total") == 2
    assert gauge(metrics, "chat_queue_items", OUTBOX) == 7


async def test_the_loop_samples_at_once_then_stops_when_asked() -> None:
    metrics, reader = Metrics(), Reader()
    reader.answer = [Backlog(OUTBOX, 1, NOW)]
    sampler = BacklogSampler(reader=reader, metrics=metrics, clock=lambda: NOW, every_seconds=60)
    stopping = asyncio.Event()
    task = asyncio.create_task(sampler.run(stopping))
    for _ in range(100):
        if gauge(metrics, "chat_queue_items", OUTBOX) == 1:
            break
        await asyncio.sleep(0.01)
    assert gauge(metrics, "chat_queue_items", OUTBOX) == 1
    stopping.set()
    await asyncio.wait_for(task, 1)


def test_breakers_are_counted_by_channel_while_not_closed() -> None:
    now = [0.0]
    opened: list[int] = []
    breaker = CircuitBreaker(
        threshold=2, open_seconds=10, clock=lambda: now[0], on_open=opened.append
    )
    breaker.failure(("acme", 2))
    assert breaker.open_counts() == {}
    breaker.failure(("acme", 2))
    breaker.failure(("globex", 2))
    breaker.failure(("globex", 2))
    breaker.failure(("acme", 3))
    assert breaker.open_counts() == {2: 2}
    assert opened == [2, 2]
    breaker.success(("acme", 2))
    assert breaker.open_counts() == {2: 1}


def test_the_metrics_report_open_breakers_by_platform_on_each_scrape() -> None:
    metrics = Metrics()
    counts = {2: 1}
    metrics.watch_breakers(lambda: counts)
    value = metrics.registry.get_sample_value
    assert value("chat_delivery_breakers_open", {"platform": "whatsapp"}) == 1
    counts[2] = 0
    assert value("chat_delivery_breakers_open", {"platform": "whatsapp"}) == 0
    metrics.breaker_opened(99)  # a channel this version does not know
    assert value("chat_delivery_breaker_openings_total", {"platform": "unknown"}) == 1
