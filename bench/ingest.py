"""Webhook ingest: signed WhatsApp text webhooks into the bridge until 200, next to a bare
aiohttp handler driven by the same client."""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiohttp import web

from bench.common import (
    DURATION_SECONDS,
    DatabaseWatch,
    Figure,
    Load,
    client_figure,
    drive,
    histogram_totals,
    start,
)
from devstack.processes import free_port, script_path

APP_SECRET = "bench-whatsapp-app-secret"
PHONE_NUMBER_ID = "100000000000009"
IN_FLIGHT = 64


def webhook(sender: str) -> bytes:
    """A WhatsApp text message webhook, as Meta sends it, with a fresh message id."""
    payload = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "102290129340398",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15550783881",
                                "phone_number_id": PHONE_NUMBER_ID,
                            },
                            "contacts": [{"profile": {"name": "Bench"}, "wa_id": sender}],
                            "messages": [
                                {
                                    "from": sender,
                                    "id": f"wamid.{uuid.uuid4().hex}",
                                    "timestamp": "1700000000",
                                    "text": {"body": "hello there"},
                                    "type": "text",
                                }
                            ],
                        },
                    }
                ],
            }
        ],
    }
    return json.dumps(payload).encode()


@asynccontextmanager
async def graph_stand_in() -> AsyncIterator[str]:
    """Answers the replies' sends as the Cloud API does, so deliveries succeed."""

    async def send(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"messages": [{"id": f"wamid.{uuid.uuid4().hex}"}]})

    app = web.Application()
    app.router.add_post("/{version}/{phone}/messages", send)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def measure(
    env: dict[str, str], server_target: str, server_pid: int, database: DatabaseWatch
) -> list[Figure]:
    """Start the bridge (forwarding to the running chat server) and the bare handler."""
    bridge_port, bare_port = free_port(), free_port()
    bridge = start(
        [script_path("chat-bridge")],
        {
            **env,
            "CHAT_BRIDGE_HOST": "127.0.0.1",
            "CHAT_BRIDGE_PORT": str(bridge_port),
            "CHAT_SERVER_TARGET": server_target,
        },
        bridge_port,
    )
    bare = start([sys.executable, "-m", "bench.bare_http", str(bare_port)], env, bare_port)
    path = "/webhooks/whatsapp/bench"
    senders = [f"1555{n:07d}" for n in range(2000)]
    counter = iter(range(10**9))
    refused: dict[int, int] = {}
    try:
        connector = aiohttp.TCPConnector(limit=IN_FLIGHT)
        async with aiohttp.ClientSession(connector=connector) as http:

            def poster(port: int) -> Any:
                async def post() -> None:
                    body = webhook(senders[next(counter) % len(senders)])
                    signature = hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
                    async with http.post(
                        f"http://127.0.0.1:{port}{path}",
                        data=body,
                        headers={
                            "Content-Type": "application/json",
                            "X-Hub-Signature-256": f"sha256={signature}",
                        },
                    ) as response:
                        await response.read()
                        if response.status != 200:
                            # 503: the server did not store it in time; Meta would retry.
                            refused[port] = refused.get(port, 0) + 1

                return post

            base = await drive(
                poster(bare_port),
                in_flight=IN_FLIGHT,
                seconds=DURATION_SECONDS,
                server_pids=(bare.pid,),
            )
            real = await drive(
                poster(bridge_port),
                in_flight=IN_FLIGHT,
                seconds=DURATION_SECONDS,
                server_pids=(bridge.pid, server_pid),
                database=database,
            )
            per_call = webhooks_per_call(bridge_port)
    finally:
        for process in (bridge, bare):
            process.terminate()
            process.wait(20)
    return figures(
        base,
        real,
        refused.get(bridge_port, 0),
        bridge=bridge.pid,
        server=server_pid,
        per_call=per_call,
    )


def webhooks_per_call(bridge_port: int) -> float | None:
    """The bridge's mean webhooks per IngestEvents call so far (its warm-up included), from
    its ``chat_bridge_webhooks_per_call``; None when its metrics did not answer."""
    totals = histogram_totals(
        f"http://127.0.0.1:{bridge_port}/metrics",
        "chat_bridge_webhooks_per_call",
        whose="the bridge's",
    )
    total, calls = (totals or {}).get("", (0.0, 0.0))
    return total / calls if calls else None


def figures(
    base: Load,
    real: Load,
    refused: int,
    *,
    bridge: int,
    server: int,
    per_call: float | None = None,
) -> list[Figure]:
    """Throughput counts only webhooks answered 200 (stored). Each webhook carries one
    message: the server's CPU per webhook is per ingested event, and holds what the server
    did meanwhile for earlier ones too (replies, deliveries, receipts). The bridge sends a
    tenant's webhooks that arrive while its calls are in flight together: ``per_call`` is
    how many went in a call, on average."""
    real.requests -= refused
    ratio = real.rps / base.rps
    bare_ms = base.cpu_ms_per_request
    bridge_ms = real.cpu_seconds_by_pid[bridge] / real.requests * 1000
    server_ms = real.cpu_seconds_by_pid[server] / real.requests * 1000
    db_cpu_ms, db_requests = real.database_per_request()
    return [
        Figure(
            "webhook_bridge_cpu_per_webhook",
            round(bridge_ms, 3),
            "ms",
            "",
            None,
            round(bare_ms, 3),
        ),
        Figure(
            "webhook_bridge_cpu_ratio",
            round(bridge_ms / bare_ms, 2),
            "x bare aiohttp",
            "<= 3x",
            bridge_ms / bare_ms <= 3,
            round(bare_ms, 3),
        ),
        *(
            [Figure("webhook_bridge_webhooks_per_call", round(per_call, 1), "webhooks", "", None)]
            if per_call is not None
            else []
        ),
        Figure("webhook_server_cpu_per_event", round(server_ms, 3), "ms", "", None),
        *(
            [Figure("webhook_db_cpu_per_webhook", round(db_cpu_ms, 3), "ms", "", None)]
            if real.database_cpu_seconds  # zero: a database elsewhere, whose CPU is not seen
            else []
        ),
        Figure("webhook_db_requests_per_webhook", round(db_requests, 2), "requests", "", None),
        Figure(
            "webhook_ingest_rps", round(real.rps, 1), "requests/s", "", None, round(base.rps, 1)
        ),
        Figure(
            "webhook_ingest_p99",
            round(real.percentile(0.99), 2),
            "ms",
            "",
            None,
            round(base.percentile(0.99), 2),
        ),
        Figure(
            "webhook_ingest_throughput_ratio",
            round(ratio, 3),
            "x bare aiohttp",
            ">= 0.2x",
            ratio >= 0.2,
            round(base.rps, 1),
        ),
        Figure(
            "webhook_ingest_refused",
            refused,
            "webhooks",
            "",
            None,
        ),
        client_figure("webhook_ingest", real.client_cores),
    ]


def replied_figure(ingest: list[Figure], *, drain_seconds: float) -> Figure:
    """The whole pipeline's rate for that load: every webhook stored, answered and its reply
    delivered to the Graph stand-in, over the ingest window plus the time the queues took to
    drain after it (replies are made after the 200, from the durable queue)."""
    stored = next(f.value for f in ingest if f.name == "webhook_ingest_rps") * DURATION_SECONDS
    return Figure(
        "webhook_to_delivered_reply_rps",
        round(stored / (DURATION_SECONDS + drain_seconds), 1),
        "requests/s",
        "",
        None,
    )
