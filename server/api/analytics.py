"""AnalyticsService: the caller's tenant's per-minute figures, from the worker's rollups."""

from __future__ import annotations

import datetime as dt
from typing import Any

from chat.v1 import analytics_service_pb2, analytics_service_pb2_grpc, common_pb2
from server.api.times import range_violations
from server.auth.principal import current_principal
from server.domain.violations import Violations
from server.repositories.analytics import COUNTERS, MAXIMA, MongoAnalytics
from server.repositories.mongo import Document

MAX_WINDOW = dt.timedelta(hours=24)


class AnalyticsServicer(analytics_service_pb2_grpc.AnalyticsServiceServicer):
    """Reads rollups; never writes."""

    def __init__(self, *, analytics: MongoAnalytics) -> None:
        self._analytics = analytics

    async def GetTenantAnalytics(
        self, request: analytics_service_pb2.GetTenantAnalyticsRequest, context: Any
    ) -> analytics_service_pb2.GetTenantAnalyticsResponse:
        window = request.time_range
        violations = Violations()
        if not window.HasField("start_time") or not window.HasField("end_time"):
            violations.add("time_range", "start_time and end_time required")
        elif out_of_range := range_violations(window, "time_range"):
            violations.extend(out_of_range)
        else:
            start = window.start_time.ToDatetime(tzinfo=dt.UTC)
            end = window.end_time.ToDatetime(tzinfo=dt.UTC)
            # end - start, not start + MAX_WINDOW: the sum overflows near year 9999.
            if not (start < end and end - start <= MAX_WINDOW):
                violations.add("time_range", "end_time after start_time, at most 24 h later")
        violations.enum("channel", request.channel, common_pb2.ChannelType.DESCRIPTOR)
        violations.raise_any()
        documents = await self._analytics.minutes(
            current_principal().tenant_id, start=start, end=end, channel=request.channel
        )
        response = analytics_service_pb2.GetTenantAnalyticsResponse()
        totals: Document = {}
        for document in documents:
            minute = response.minutes.add(channel=document["channel"])
            minute.minute_start_time.FromDatetime(document["minute"])
            minute.figures.CopyFrom(figures(document))
            for name in COUNTERS:
                totals[name] = totals.get(name, 0) + document.get(name, 0)
            for name in MAXIMA:
                totals[name] = max(totals.get(name, 0), document.get(name, 0))
        response.totals.CopyFrom(figures(totals))
        return response


def figures(sums: Document) -> analytics_service_pb2.AnalyticsFigures:
    """Counts as they are, means from the sums."""
    responses = int(sums.get("responses", 0))
    ended = int(sums.get("conversations_ended", 0))
    succeeded = int(sums.get("deliveries_succeeded", 0))
    failed = int(sums.get("deliveries_failed", 0))
    return analytics_service_pb2.AnalyticsFigures(
        messages_in=int(sums.get("messages_in", 0)),
        messages_out=int(sums.get("messages_out", 0)),
        responses=responses,
        response_time_mean_ms=sums.get("response_time_sum_ms", 0) / responses if responses else 0,
        response_time_max_ms=float(sums.get("response_time_max_ms", 0)),
        conversations_ended=ended,
        conversation_duration_mean_seconds=(
            sums.get("conversation_duration_sum_seconds", 0) / ended if ended else 0
        ),
        deliveries_succeeded=succeeded,
        deliveries_failed=failed,
        delivery_success_rate=succeeded / (succeeded + failed) if succeeded + failed else 0,
    )
