"""Batched webhooks: WhatsApp webhooks carrying many statuses or many messages, one at a time
into the bridge, timed until its answer. A platform retries anything but a 200, so the figures
are whether every one was answered 200 and the slowest answer; the bridge gives each of its
IngestEvents calls FORWARD_TIMEOUT_SECONDS (2 s) before it answers 503. A webhook larger than
one call holds is stored in the server's inbox and applied after the answer: the time until
the inbox is empty again is the third figure.

The batches go to a chat server of their own, on a database of its own: their messages queue
some 27,000 replies, which no later figure should run beside, and which would take minutes to
work off. That server is stopped, and its database dropped, once the figures are taken."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import subprocess
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
from pymongo import AsyncMongoClient

from bench.common import Figure, start
from bench.ingest import APP_SECRET, PHONE_NUMBER_ID
from devstack.processes import free_port, script_path

#: The bridge's default CHAT_BRIDGE_MAX_BODY_BYTES.
MAX_BODY = 1024 * 1024
#: Each shape's webhooks (fresh ids each): two, so that a slow one shows; each of the largest
#: takes one to four minutes to apply, the longest wait of make bench.
REPEATS = 2
#: (name, kind, events or None for as many as the body limit admits, senders)
SHAPES: tuple[tuple[str, str, int | None, int], ...] = (
    ("statuses_100", "statuses", 100, 100),
    ("statuses_1000", "statuses", 1000, 500),
    ("statuses_body_limit", "statuses", None, 500),
    ("messages_100", "messages", 100, 10),
    # WhatsApp batches at most 1,000 updates in one POST; the body limit admits some 8,000.
    ("messages_1000", "messages", 1000, 100),
    ("messages_body_limit", "messages", None, 500),
)


def _webhook(value: dict[str, Any]) -> dict[str, Any]:
    return {
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
                            **value,
                        },
                    }
                ],
            }
        ],
    }


def _fill(
    make: Callable[[int], dict[str, Any]], count: int | None, around: dict[str, Any]
) -> list[dict[str, Any]]:
    """``count`` items, or as many as fit in MAX_BODY with the webhook ``around`` them."""
    if count is not None:
        return [make(n) for n in range(count)]
    items: list[dict[str, Any]] = []
    size = len(json.dumps(around))
    while True:
        item = make(len(items))
        size += len(json.dumps(item)) + 2
        if size > MAX_BODY:
            return items
        items.append(item)


def batch(kind: str, count: int | None, senders: int) -> tuple[bytes, int]:
    """A webhook body of fresh statuses (for messages not recorded: each is parked) or text
    messages, and how many it carries."""
    tag = uuid.uuid4().hex[:8]
    users = [f"1{tag[:4]}{n:06d}" for n in range(senders)]
    if kind == "statuses":
        items = _fill(
            lambda n: {
                "id": f"wamid.{tag}{n:06d}",
                "status": "delivered",
                "timestamp": "1750030073",
                "recipient_id": users[n % senders],
            },
            count,
            _webhook({"statuses": []}),
        )
        value: dict[str, Any] = {"statuses": items}
    else:
        contacts = [{"profile": {"name": "Bench"}, "wa_id": user} for user in users]
        items = _fill(
            lambda n: {
                "from": users[n % senders],
                "id": f"wamid.{tag}{n:06d}",
                "timestamp": "1750030073",
                "text": {"body": f"hello {n}"},
                "type": "text",
            },
            count,
            _webhook({"contacts": contacts, "messages": []}),
        )
        value = {"contacts": contacts, "messages": items}
    return json.dumps(_webhook(value)).encode(), len(items)


async def _applied(inbox: Any) -> float:
    """Seconds until the server's inbox is empty."""
    started = time.perf_counter()
    while True:  # polling another process's database: no event to wait on
        if not await inbox.count_documents({}):
            return time.perf_counter() - started
        await asyncio.sleep(0.05)


#: The database of this part's chat server.
DATABASE = "chat_bench_batches"


async def measure(env: dict[str, str], mongodb_uri: str) -> list[Figure]:
    """Each shape REPEATS times (fresh ids each time), the slowest answer of each, and the
    slowest time from the answer until the events were applied."""
    server_port, port = free_port(), free_port()
    server = start(
        [script_path("chat-server")],
        {
            **env,
            "CHAT_GRPC_ADDRESS": f"127.0.0.1:{server_port}",
            "CHAT_METRICS_ADDRESS": "off",
            "CHAT_MONGODB_DATABASE": DATABASE,
        },
        server_port,
    )
    bridge = start(
        [script_path("chat-bridge")],
        {
            **env,
            "CHAT_BRIDGE_HOST": "127.0.0.1",
            "CHAT_BRIDGE_PORT": str(port),
            "CHAT_SERVER_TARGET": f"127.0.0.1:{server_port}",
        },
        port,
    )
    figures: list[Figure] = []
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_uri)
    inbox = mongo[DATABASE]["ingest_inbox"]
    try:
        # A connection per webhook: between two, the inbox can take longer to apply than the
        # bridge keeps an idle connection (75 s), and a POST on a connection it closed meanwhile
        # fails with a broken pipe.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as http:
            for name, kind, count, senders in SHAPES:
                slowest, applied, refused, events = 0.0, 0.0, 0, 0
                for _ in range(REPEATS):
                    body, events = batch(kind, count, senders)
                    signature = hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
                    started = time.perf_counter()
                    async with http.post(
                        f"http://127.0.0.1:{port}/webhooks/whatsapp/bench",
                        data=body,
                        headers={
                            "Content-Type": "application/json",
                            "X-Hub-Signature-256": f"sha256={signature}",
                        },
                        timeout=aiohttp.ClientTimeout(total=120),
                    ) as response:
                        await response.read()
                        refused += response.status != 200
                    slowest = max(slowest, time.perf_counter() - started)
                    applied = max(applied, await _applied(inbox))
                figures += [
                    Figure(
                        f"webhook_batch_{name}_slowest",
                        round(slowest * 1000, 1),
                        "ms",
                        f"({events} events)",
                        None,
                    ),
                    Figure(
                        f"webhook_batch_{name}_applied_after_answer_slowest",
                        round(applied * 1000, 1),
                        "ms",
                        "(0 when applied within the call)",
                        None,
                    ),
                    Figure(
                        f"webhook_batch_{name}_refused",
                        refused,
                        f"of {REPEATS}",
                        "0 (each answered 200)",
                        refused == 0,
                    ),
                ]
    finally:
        for process in (bridge, server):
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        # Once its server is gone: a drop beside an open transaction can stall the store.
        await mongo.drop_database(DATABASE)
        await mongo.close()
    return figures
