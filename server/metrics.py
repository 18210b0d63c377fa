"""Prometheus metrics of one server process, in a registry of its own (no import-time state),
served on CHAT_METRICS_ADDRESS at /metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from chat.v1 import common_pb2

#: RPC durations, from a health check's fraction of a millisecond to a slow export.
RPC_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def platform_label(channel: int) -> str:
    """A channel's metrics label: ``whatsapp``, ``slack``... (``unknown`` for a value this
    version does not know)."""
    if channel not in common_pb2.ChannelType.values():
        return "unknown"
    name = common_pb2.ChannelType.Name(common_pb2.ChannelType.ValueType(channel))
    return name.removeprefix("CHANNEL_TYPE_").lower()


class Metrics:
    """The counters the interceptors and services update."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.auth_rejected = Counter(
            "chat_auth_rejected",
            "Calls refused by authentication or authorization, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.malformed_requests = Counter(
            "chat_malformed_requests",
            "Requests refused because their bytes were not a valid message, by method.",
            ["method"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "chat_rate_limited",
            "Calls refused by a rate limit, by the kind of limit.",
            ["limit"],
            registry=self.registry,
        )
        self.rate_limit_fail_open = Counter(
            "chat_rate_limit_fail_open",
            "Calls let through unchecked because the rate-limit store was unreachable.",
            registry=self.registry,
        )
        self.ingest_applied_later = Counter(
            "chat_ingest_applied_later",
            "Platform events stored in the inbox by IngestEvents (apply_later) and applied "
            "after the call, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.group_commit_batch = Histogram(
            "chat_group_commit_batch_size",
            "Writes per transaction (group commit), by call: send_message exchanges, ingest "
            "inbound platform messages, reply jobs answered, delivery outcomes recorded.",
            ["call"],
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )

        # RPCs (interceptors/rpc_metrics.py): labels are the method and the final code only.
        self.rpc_duration = Histogram(
            "chat_rpc_duration_seconds",
            "Time from a call's arrival to its status (a stream's: to its end), by method and "
            "gRPC status code.",
            ["method", "code"],
            buckets=RPC_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.rpc_in_flight = Gauge(
            "chat_rpc_in_flight_calls",
            "Calls started and not yet answered (streams included), by method.",
            ["method"],
            registry=self.registry,
        )
        self.rpc_open_streams = Gauge(
            "chat_rpc_open_streams",
            "Server-streaming responses open (StreamConversationEvents, media), by method.",
            ["method"],
            registry=self.registry,
        )
        # The queues in MongoDB, sampled (server/sampler.py), never read on a scrape.
        self.queue_items = Gauge(
            "chat_queue_items",
            "Items waiting, by queue: outbox (documents, one per transaction's events), reply "
            "(jobs), delivery (queued or being sent), inbox (ingest batches).",
            ["queue"],
            registry=self.registry,
        )
        self.queue_oldest_age = Gauge(
            "chat_queue_oldest_age_seconds",
            "How long the oldest waiting item of each queue has waited (0: empty).",
            ["queue"],
            registry=self.registry,
        )
        self.queue_sample_failures = Counter(
            "chat_queue_sample_failures",
            "Samples of the queues that failed (MongoDB down or slow): the queue gauges then "
            "keep their last values.",
            registry=self.registry,
        )
        # Deliveries to the platforms (services/delivery.py).
        self.deliveries = Counter(
            "chat_deliveries",
            "Delivery attempts by platform and outcome: sent, failed (for good), retried "
            "(a transient failure, tried again later), postponed (no request made: an open "
            "breaker, a reported rate limit, pacing, an earlier message first).",
            ["platform", "outcome"],
            registry=self.registry,
        )
        self.rate_limit_holds = Counter(
            "chat_delivery_rate_limit_holds",
            "Rate limits a platform reported on a send, held for every delivery they cover, "
            "by platform and scope (destination: one recipient; channel: the tenant's account).",
            ["platform", "scope"],
            registry=self.registry,
        )
        self.breaker_openings = Counter(
            "chat_delivery_breaker_openings",
            "Times a tenant's circuit breaker for a platform opened.",
            ["platform"],
            registry=self.registry,
        )
        self._breakers = _BreakerCollector()
        self.registry.register(self._breakers)

    def delivery_outcome(self, channel: int, outcome: str) -> None:
        """A delivery attempt ended (services/delivery_guards.DeliveryObserver)."""
        self.deliveries.labels(platform_label(channel), outcome).inc()

    def delivery_held(self, channel: int, scope: str) -> None:
        """A platform reported a rate limit."""
        self.rate_limit_holds.labels(platform_label(channel), scope).inc()

    def breaker_opened(self, channel: int) -> None:
        """A tenant's breaker for a platform opened."""
        self.breaker_openings.labels(platform_label(channel)).inc()

    def watch_breakers(self, open_counts: Callable[[], Mapping[int, int]]) -> None:
        """Report the open breakers ``open_counts`` gives (by channel) on every scrape."""
        self._breakers.source = open_counts

    async def serve(self, address: str) -> web.AppRunner:
        """Start the /metrics HTTP endpoint; the caller cleans the runner up."""
        return await serve_registry(self.registry, address)


async def serve_registry(registry: CollectorRegistry, address: str) -> web.AppRunner:
    """Serve ``registry`` at /metrics on ``address``; the caller cleans the runner up."""
    host, _, port = address.rpartition(":")
    app = web.Application()

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host or "0.0.0.0", int(port)).start()  # noqa: S104
    return runner


class _BreakerCollector(Collector):
    """Open circuit breakers by platform, read from the delivery worker on each scrape (a
    few dictionary entries; nothing to keep in step)."""

    def __init__(self) -> None:
        self.source: Callable[[], Mapping[int, int]] = dict

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "chat_delivery_breakers_open",
            "Circuit breakers open or half-open (tenants whose sends to a platform wait), by "
            "platform.",
            labels=["platform"],
        )
        for channel, count in sorted(self.source().items()):
            family.add_metric([platform_label(channel)], count)
        yield family
