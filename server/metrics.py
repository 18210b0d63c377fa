"""Prometheus metrics of one server process, in a registry of its own (no import-time state),
served on CHAT_METRICS_ADDRESS at /metrics."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)


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
