"""The metrics the processes export, scraped from a running chat server and bridge after real
calls (a signed WhatsApp message, its reply delivered to the platform stand-in, a duplicate and
an unsigned webhook); the alert rules and the dashboard in deploy/ name only exported metrics;
a database that does not answer makes a sample fail, never /metrics."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client import generate_latest
from pymongo import AsyncMongoClient

from server.backlog_sampler import BacklogSampler
from server.domain.clock import utc_now
from server.metrics import Metrics
from server.repositories.backlog import MongoBacklog
from server.worker.main import WorkerMetrics
from tests.support.bridge import WHATSAPP_SECRET, Bridge
from tests.support.metrics_text import exported_names, family_names, promql_names, sample
from tests.support.paths import REPO_ROOT
from tests.support.servers import RunningServer
from tests.support.stand_ins import Mongo, Platforms, reply_of, sent, whatsapp_text
from tests.support.waiting import eventually

RULES = REPO_ROOT / "deploy" / "prometheus" / "chat-alerts.rules.yaml"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "chat-service.json"
INGEST = "/chat.v1.IngestService/IngestEvents"


@pytest.fixture
def mongo(delivery_mongo: Mongo) -> Mongo:
    return delivery_mongo


async def scrape(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url) as response:
        assert response.status == 200
        return await response.text()


async def scrapes(server: RunningServer, bridge: Bridge) -> tuple[str, str]:
    """The server's and the bridge's /metrics."""
    server_url = f"http://127.0.0.1:{server.server.metrics_port}/metrics"
    return await scrape(bridge.http, server_url), await scrape(bridge.http, bridge.url + "/metrics")


async def test_a_webhook_round_trip_shows_in_the_metrics(
    stack_up: tuple[RunningServer, Bridge], platforms: Platforms, mongo: Mongo
) -> None:
    server, bridge = stack_up
    payload, wamid = whatsapp_text("16505550" + str(time.time_ns())[-4:])
    assert await bridge.meta("whatsapp", payload, WHATSAPP_SECRET) == 200
    reply = await reply_of(mongo, wamid)
    await sent(mongo, reply.id, what="the reply to be sent")
    assert await bridge.meta("whatsapp", payload, WHATSAPP_SECRET) == 200  # a retry
    status, _ = await bridge.post("/webhooks/whatsapp/acme", json.dumps(payload).encode())
    assert status == 401

    served, bridged = await scrapes(server, bridge)
    ingest = {"method": INGEST}
    assert (sample(served, "chat_rpc_duration_seconds_count", **ingest, code="OK") or 0) >= 2
    assert sample(served, "chat_rpc_in_flight_calls", **ingest) == 0
    assert (sample(served, "chat_group_commit_batch_size_count", call="ingest") or 0) >= 1
    assert sample(bridged, "chat_bridge_events_total", platform="whatsapp", outcome="accepted")
    assert sample(bridged, "chat_bridge_events_total", platform="whatsapp", outcome="duplicate")
    refused = {"platform": "whatsapp", "reason": "unsigned"}
    assert sample(bridged, "chat_bridge_webhooks_refused_total", **refused) == 1
    assert sample(bridged, "chat_bridge_ack_seconds_count", platform="whatsapp") == 3

    async def sampled() -> bool:
        text = await scrape(bridge.http, f"http://127.0.0.1:{server.server.metrics_port}/metrics")
        return all(
            sample(text, "chat_queue_items", queue=queue) is not None
            for queue in ("outbox", "reply", "delivery", "inbox")
        )

    # The sampler's first sample, taken at start-up against the real database.
    await eventually(sampled, "the queues sampled")

    async def delivered() -> bool:
        # Counted just after the outcome's commit, which `sent` saw: soon after, not before.
        text = await scrape(bridge.http, f"http://127.0.0.1:{server.server.metrics_port}/metrics")
        return sample(text, "chat_deliveries_total", platform="whatsapp", outcome="sent") == 1

    await eventually(delivered, "the delivery counted")


def rule_expressions() -> list[tuple[str, str]]:
    document = yaml.safe_load(RULES.read_text())
    return [
        (rule["alert"], rule["expr"]) for group in document["groups"] for rule in group["rules"]
    ]


def dashboard_expressions() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]


async def test_the_alerts_and_the_dashboard_name_only_exported_metrics(
    stack_up: tuple[RunningServer, Bridge],
) -> None:
    served, bridged = await scrapes(*stack_up)
    worker = generate_latest(WorkerMetrics().registry).decode()
    exported = exported_names(served) | exported_names(bridged) | exported_names(worker)
    expressions = rule_expressions() + dashboard_expressions()
    assert len(rule_expressions()) >= 5
    for where, expr in expressions:
        names = promql_names(expr)  # a syntax error fails here, with its reason
        assert names, f"{where}: names no chat_* metric"
        assert names <= exported, f"{where}: not exported: {sorted(names - exported)}"
    # The alerts the operations guide promises, each with its runbook.
    alerts = {name for name, _ in rule_expressions()}
    guide = (REPO_ROOT / "docs" / "operations.md").read_text().lower()
    for alert in alerts:
        assert f"#### {alert.lower()}" in guide, f"no runbook for {alert}"


async def test_every_exported_metric_is_documented(
    stack_up: tuple[RunningServer, Bridge],
) -> None:
    served, bridged = await scrapes(*stack_up)
    worker = generate_latest(WorkerMetrics().registry).decode()
    exported = family_names(served) | family_names(bridged) | family_names(worker)
    assert len(exported) >= 28  # 16 of the server, 7 of the bridge, 5 of the worker
    guide = (REPO_ROOT / "docs" / "operations.md").read_text()
    section = guide.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    assert sorted(n for n in exported if f"`{n}`" not in section) == []


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_a_database_that_does_not_answer_fails_a_sample_not_the_scrape() -> None:
    metrics = Metrics()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        f"mongodb://127.0.0.1:{_unused_port()}/", serverSelectionTimeoutMS=300, tz_aware=True
    )
    sampler = BacklogSampler(
        reader=MongoBacklog(database=client["chat"]), metrics=metrics, clock=utc_now
    )
    runner = await metrics.serve("127.0.0.1:0")
    try:
        assert not await sampler.sample()
        async with aiohttp.ClientSession() as http:
            started = time.monotonic()
            text = await scrape(http, f"http://127.0.0.1:{runner.addresses[0][1]}/metrics")
        assert time.monotonic() - started < 1
        assert sample(text, "chat_queue_sample_failures_total") == 1
    finally:
        await runner.cleanup()
        await client.close()
