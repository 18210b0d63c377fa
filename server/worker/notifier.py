"""Alerts: a tenant's delivery failure rate, its dead letters, or the consumers' lag crossing a
configured threshold. Each alert goes to the log and, when configured, to a webhook URL, at
most once per interval per condition across every worker (claimed in MongoDB).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import aiohttp
import structlog
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from server.repositories.analytics import MongoAnalytics, minute_of
from server.repositories.mongo import ALERTS, DEAD_LETTERS, Document
from server.settings import AlertSettings

log = structlog.get_logger("chat.worker.alerts")


class Notifier:
    """Checks the conditions and sends alerts."""

    def __init__(
        self,
        *,
        database: AsyncDatabase[Document],
        analytics: MongoAnalytics,
        settings: AlertSettings,
    ) -> None:
        self._alerts = database[ALERTS]
        self._dead_letters = database[DEAD_LETTERS]
        self._analytics = analytics
        self._settings = settings
        self._http: aiohttp.ClientSession | None = None

    async def check_failure_rate(self, tenant_id: str, *, now: dt.datetime) -> None:
        """Alert when the tenant's recent delivery failure rate is at or over the threshold."""
        start = minute_of(now) - dt.timedelta(minutes=self._settings.window_minutes - 1)
        minutes = await self._analytics.minutes(
            tenant_id, start=start, end=now + dt.timedelta(minutes=1), channel=0
        )
        failed = sum(m.get("deliveries_failed", 0) for m in minutes)
        succeeded = sum(m.get("deliveries_succeeded", 0) for m in minutes)
        outcomes = failed + succeeded
        if outcomes < self._settings.delivery_min_outcomes:
            return
        rate = failed / outcomes
        if rate >= self._settings.delivery_failure_rate:
            await self._alert(
                tenant_id,
                "delivery_failure_rate",
                f"{rate:.0%} of deliveries failed in the last {self._settings.window_minutes} min",
                {"failed": failed, "succeeded": succeeded, "rate": round(rate, 4)},
                now=now,
            )

    async def record_dead_letter(
        self, tenant_id: str, *, handler: str, event_type: str, now: dt.datetime
    ) -> None:
        """Count a dead letter; alert when the tenant's recent count reaches the threshold."""
        await self._dead_letters.insert_one(
            {"tenant_id": tenant_id, "handler": handler, "event_type": event_type, "dead_time": now}
        )
        since = now - dt.timedelta(minutes=self._settings.window_minutes)
        count = await self._dead_letters.count_documents(
            {"tenant_id": tenant_id, "dead_time": {"$gte": since}}
        )
        if count >= self._settings.dead_letters:
            await self._alert(
                tenant_id,
                "dead_letters",
                f"{count} events dead-lettered in the last {self._settings.window_minutes} min",
                {"dead_letters": count},
                now=now,
            )

    async def check_lag(self, lag: Mapping[str, int], *, now: dt.datetime) -> None:
        """Alert when the summed lag over ``lag`` (partition -> events) reaches the threshold."""
        total = sum(lag.values())
        if total >= self._settings.consumer_lag:
            await self._alert(
                "",
                "consumer_lag",
                f"{total} events wait to be handled",
                {"lag": total, "partitions": dict(lag)},
                now=now,
            )

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _alert(
        self,
        tenant_id: str,
        condition: str,
        message: str,
        figures: dict[str, Any],
        *,
        now: dt.datetime,
    ) -> None:
        if not await self._claim(tenant_id, condition, now):
            return
        log.warning("alert", condition=condition, tenant_id=tenant_id, message=message, **figures)
        if not self._settings.webhook_url:
            return
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        body = {
            "condition": condition,
            "tenant_id": tenant_id,
            "message": message,
            "figures": figures,
            "time": now.isoformat(),
        }
        try:
            async with self._http.post(self._settings.webhook_url, json=body) as response:
                if response.status >= 300:
                    log.warning("alert webhook refused", status=response.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("alert webhook unreachable", error=repr(exc))

    async def _claim(self, tenant_id: str, condition: str, now: dt.datetime) -> bool:
        """Whether this worker may send the alert now (once per interval, across workers)."""
        key = f"{tenant_id}:{condition}"
        cutoff = now - dt.timedelta(seconds=self._settings.interval_seconds)
        claimed = await self._alerts.update_one(
            {"_id": key, "tenant_id": tenant_id, "last_sent_time": {"$lte": cutoff}},
            {"$set": {"last_sent_time": now}},
        )
        if claimed.modified_count:
            return True
        try:
            await self._alerts.insert_one(
                {"_id": key, "tenant_id": tenant_id, "last_sent_time": now}
            )
        except DuplicateKeyError:
            return False
        return True
