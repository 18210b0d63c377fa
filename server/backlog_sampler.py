"""Samples the queues kept in MongoDB (outbox, reply jobs, deliveries, ingest inbox) into the
metrics' gauges, every few seconds in a loop of its own.

A scrape never reads MongoDB: it only reads the gauges, so a slow or unreachable database
cannot make /metrics slow or fail, and scrapers (several Prometheus replicas, a person with
curl) add no load. The sampler's queries are bounded in time (MongoBacklog's max_time_ms and
the timeout here); a failed sample is logged, counted and leaves the last values.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Callable
from typing import Protocol

import structlog

from server.domain.backlog import Backlog
from server.metrics import Metrics

log = structlog.get_logger("chat.metrics")

#: Often enough for an alert that fires after minutes; cheap: four counts and four lookups.
SAMPLE_SECONDS = 15.0
SAMPLE_TIMEOUT_SECONDS = 5.0


class BacklogReader(Protocol):
    """The queues' backlogs (repositories/backlog.py)."""

    async def backlogs(self) -> list[Backlog]:
        """Every queue's backlog now."""
        ...


class BacklogSampler:
    """Keeps the queue gauges current."""

    def __init__(
        self,
        *,
        reader: BacklogReader,
        metrics: Metrics,
        clock: Callable[[], dt.datetime],
        every_seconds: float = SAMPLE_SECONDS,
        timeout_seconds: float = SAMPLE_TIMEOUT_SECONDS,
    ) -> None:
        self._reader = reader
        self._metrics = metrics
        self._clock = clock
        self._every = every_seconds
        self._timeout = timeout_seconds

    async def sample(self) -> bool:
        """One sample into the gauges; False (logged and counted) when it failed."""
        try:
            backlogs = await asyncio.wait_for(self._reader.backlogs(), self._timeout)
        except Exception as exc:  # noqa: BLE001 - any failure is a missed sample, never a crash
            self._metrics.queue_sample_failures.inc()
            log.warning("queue backlog not sampled", error=type(exc).__name__)
            return False
        now = self._clock()
        for backlog in backlogs:
            age = (now - _aware(backlog.oldest)).total_seconds() if backlog.oldest else 0.0
            self._metrics.queue_items.labels(backlog.queue).set(backlog.items)
            self._metrics.queue_oldest_age.labels(backlog.queue).set(max(0.0, age))
        return True

    async def run(self, stopping: asyncio.Event) -> None:
        """Sample until ``stopping`` is set."""
        while not stopping.is_set():
            await self.sample()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self._every)


def _aware(when: dt.datetime) -> dt.datetime:
    # PyMongo returns naive UTC datetimes unless the client is tz_aware.
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)
