"""The bridge's Prometheus metrics, in a registry of its own, served at GET /metrics."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

#: A platform waits a few seconds for its answer (Slack 3 s, Meta and Teams about 10-15 s)
#: before it counts a delivery as failed and retries.
ACK_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10)
#: A lone webhook is one call; a group holds at most MAX_BATCH events (500 status reports).
WEBHOOKS_PER_CALL_BUCKETS = (1, 2, 4, 8, 16, 32, 64)

#: A refusal's reason, by the status the bridge answered: one of a few fixed words.
REFUSAL_REASONS = {
    400: "bad_request",
    401: "unsigned",
    403: "bad_signature",
    404: "unknown_tenant",
    408: "body_timeout",
    413: "too_large",
    415: "unsupported_media_type",
    503: "unavailable",
}


def refusal_reason(status: int) -> str:
    """The ``reason`` label of a refused webhook."""
    return REFUSAL_REASONS.get(status, "other")


class BridgeMetrics:
    """Webhooks by platform and answer, events by outcome, ignored and rejected entries, the
    time to acknowledge, and the web gateway's sockets."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.webhooks = Counter(
            "chat_bridge_webhooks",
            "Webhook requests, by platform and HTTP status answered.",
            ["platform", "status"],
            registry=self.registry,
        )
        self.refused = Counter(
            "chat_bridge_webhooks_refused",
            "Webhook requests refused (a 4xx or 503; the platform retries a 503), by platform "
            "and reason: unsigned, bad_signature, unknown_tenant, body_timeout, too_large, "
            "bad_request, unavailable.",
            ["platform", "reason"],
            registry=self.registry,
        )
        self.ack_seconds = Histogram(
            "chat_bridge_ack_seconds",
            "Time from a webhook's arrival to the bridge's answer (200 once the server stored "
            "its events), by platform.",
            ["platform"],
            buckets=ACK_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.events = Counter(
            "chat_bridge_events",
            "Normalized events forwarded, by platform and the server's outcome (accepted, "
            "duplicate, ignored, rejected, deferred, queued).",
            ["platform", "outcome"],
            registry=self.registry,
        )
        self.ignored = Counter(
            "chat_bridge_ignored",
            "Entries acknowledged without effect (unsupported types, echoes), by kind.",
            ["platform", "kind"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "chat_bridge_rejected",
            "Signed bodies, or entries of a batch, acknowledged but unusable, by reason.",
            ["platform", "reason"],
            registry=self.registry,
        )
        self.webhooks_per_call = Histogram(
            "chat_bridge_webhooks_per_call",
            "Webhooks forwarded together in one IngestEvents call (a tenant's webhooks that "
            "waited while its calls were in flight go together).",
            buckets=WEBHOOKS_PER_CALL_BUCKETS,
            registry=self.registry,
        )
        self.web_sockets = Gauge(
            "chat_bridge_web_sockets_open",
            "Visitors' WebSockets open on the web chat gateway.",
            registry=self.registry,
        )

    def answered(self, platform: str, status: int, seconds: float) -> None:
        """A webhook was answered with ``status`` after ``seconds``."""
        self.webhooks.labels(platform, str(status)).inc()
        self.ack_seconds.labels(platform).observe(seconds)
        if status >= 400:
            self.refused.labels(platform, refusal_reason(status)).inc()

    def watch_sockets(self, count: Callable[[], int]) -> None:
        """Read the open sockets from the gateway on every scrape."""
        self.web_sockets.set_function(count)


async def metrics_page(registry: CollectorRegistry) -> web.Response:
    """Prometheus text format."""
    return web.Response(
        body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )
