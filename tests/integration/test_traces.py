"""One signed webhook, one trace: the bridge, the server and the worker, run as the real
processes, export their spans over OTLP/HTTP to a receiver of the test's own, and the spans
form a single tree rooted at the bridge's webhook request."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import json
import operator
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from aiokafka import AIOKafkaConsumer, TopicPartition

from devstack.processes import free_port, port_open, script_path
from devstack.stack import Endpoints
from server.events.topics import ALL_TOPICS, DEAD_LETTER_TOPIC
from tests.support import whatsapp_batches
from tests.support.bridge import TENANTS, WHATSAPP_SECRET
from tests.support.chat_client import JWT_SETTINGS, ChatClient
from tests.support.otlp import ReceivedSpan, Receiver, otlp_receiver
from tests.support.servers import tenants_file
from tests.support.stand_ins import Platforms, whatsapp_text
from tests.support.streams import Stream
from tests.support.waiting import eventually
from webhook_bridge.forwarder import MAX_BATCH

#: What one inbound WhatsApp message passes through, by (service, span name).
EXPECTED = {
    ("chat-bridge", "POST /webhooks/whatsapp/{tenant_id}"),
    ("chat-bridge", "/chat.v1.IngestService/IngestEvents"),
    ("chat-server", "/chat.v1.IngestService/IngestEvents"),
    ("chat-server", "ingest.apply"),
    ("chat-server", "reply.job"),
    ("chat-server", "reply.respond"),
    ("chat-server", "reply.store"),
    ("chat-server", "delivery.send"),
    ("chat-server", "POST"),  # the platform's send API (aiohttp's client)
    ("chat-server", "outbox.relay"),
    ("chat-worker", "worker.handle"),
    ("chat-worker", "worker.handler"),
}


@contextlib.asynccontextmanager
async def process(
    script: str, env: Mapping[str, str], log: Path, port: int | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A console script of ours, its output in ``log``; once ``port`` listens (when given);
    stopped with SIGTERM after."""
    with log.open("ab") as out:
        child = await asyncio.create_subprocess_exec(
            script_path(script), env=dict(env), stdout=out, stderr=asyncio.subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        while port is not None and not port_open("127.0.0.1", port):
            assert child.returncode is None, f"{script} exited; its output is in {log}"
            assert time.monotonic() < deadline, f"{script} did not start"
            await asyncio.sleep(0.2)
        yield child
    finally:
        if child.returncode is None:
            child.terminate()
            try:
                await asyncio.wait_for(child.wait(), 30)
            except TimeoutError:
                child.kill()
                await child.wait()


async def skip_to_the_end(bootstrap: str, group: str) -> None:
    """Commit the chat topics' end offsets for ``group``: its worker then handles this
    test's records, not the session's backlog."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        topics = await consumer.topics()
        partitions = [
            TopicPartition(topic, partition)
            for topic in ALL_TOPICS
            if topic != DEAD_LETTER_TOPIC and topic in topics
            for partition in consumer.partitions_for_topic(topic) or ()
        ]
        if partitions:
            ends = await consumer.end_offsets(partitions)
            consumer.assign(partitions)
            await consumer.commit(dict(ends))
    finally:
        await consumer.stop()


def orphans(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    """Spans whose parent is not in the trace."""
    ids = {span.span_id for span in spans}
    return [span for span in spans if span.parent_span_id and span.parent_span_id not in ids]


@dataclass(frozen=True, slots=True)
class Traced:
    """The three processes, exporting to ``receiver``; their logs in ``logs``."""

    receiver: Receiver
    target: str
    bridge_url: str
    logs: Path


@contextlib.asynccontextmanager
async def traced_service(
    stack: Endpoints,
    platforms: Platforms,
    tmp_path: Path,
    bridge_env: Mapping[str, str] | None = None,
) -> AsyncIterator[Traced]:
    """chat-server, chat-worker and chat-bridge as processes, traced to a receiver; the
    bridge's environment has ``bridge_env`` too."""
    async with otlp_receiver() as receiver:
        env = {
            # The test's own OTEL_* only (a CI's OTEL_SDK_DISABLED would silence the processes).
            **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
            **stack.as_env(),
            **JWT_SETTINGS,
            "CHAT_TENANTS_FILE": tenants_file(tmp_path, TENANTS),
            "CHAT_MONGODB_DATABASE": "traces_" + uuid.uuid4().hex[:12],
            "CHAT_WHATSAPP_API_BASE": platforms.base,
            "CHAT_GRAPH_API_VERSION": "v23.0",
            "CHAT_LOG_FORMAT": "json",
            "CHAT_LOG_LEVEL": "info",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            # Exported within a moment of ending, not every 5 s.
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        group = f"traces-{uuid.uuid4().hex}"
        await skip_to_the_end(stack.kafka_bootstrap, group)
        server_port, bridge_port = free_port(), free_port()
        target = f"127.0.0.1:{server_port}"
        async with (
            process(
                "chat-server",
                {**env, "CHAT_GRPC_ADDRESS": target, "CHAT_METRICS_ADDRESS": "off"},
                tmp_path / "server.log",
                server_port,
            ),
            process(
                "chat-worker",
                {**env, "CHAT_WORKER_GROUP": group, "CHAT_WORKER_METRICS_ADDRESS": "off"},
                tmp_path / "worker.log",
            ),
            process(
                "chat-bridge",
                {
                    **env,
                    "CHAT_SERVER_TARGET": target,
                    "CHAT_BRIDGE_HOST": "127.0.0.1",
                    "CHAT_BRIDGE_PORT": str(bridge_port),
                    **(bridge_env or {}),
                },
                tmp_path / "bridge.log",
                bridge_port,
            ),
        ):
            yield Traced(receiver, target, f"http://127.0.0.1:{bridge_port}", tmp_path)
        assert receiver.refused == []


async def test_one_webhook_is_one_trace_across_bridge_server_and_worker(
    stack: Endpoints, platforms: Platforms, tmp_path: Path
) -> None:
    async with (
        traced_service(stack, platforms, tmp_path) as traced,
        aiohttp.ClientSession() as http,
    ):
        receiver = traced.receiver
        payload, _ = whatsapp_text("15550001111", "is anyone there?")
        status, text = await post_webhook(http, traced.bridge_url, payload)
        assert status == 200, text
        trace = await whole_trace(receiver, is_root=bridge_webhook, expected=EXPECTED)
    roots = [span for span in trace if not span.parent_span_id]
    assert [(root.service, root.kind, root.name) for root in roots] == [
        ("chat-bridge", "SERVER", "POST /webhooks/whatsapp/{tenant_id}")
    ]
    assert orphans(trace) == []
    found = {(span.service, span.name) for span in trace}
    assert found >= EXPECTED
    # The Kafka hop is a producer span in the server and a consumer span in the worker.
    kinds = {(span.service, span.name): span.kind for span in trace}
    assert kinds[("chat-server", "outbox.relay")] == "PRODUCER"
    assert kinds[("chat-worker", "worker.handle")] == "CONSUMER"
    # The platform's send is inside the delivery, and the database calls are in the trace.
    by_id = {span.span_id: span for span in trace}
    sends = [s for s in trace if s.service == "chat-server" and s.name == "POST"]
    assert any(by_id[s.parent_span_id].name == "delivery.send" for s in sends)
    assert any(span.attributes.get("db.system") == "mongodb" for span in trace)

    # The log lines written within the trace name it, beside the request id.
    trace_id = roots[0].trace_id
    ingest_calls = [
        line
        for line in json_lines(traced.logs / "server.log")
        if line.get("event") == "rpc finished"
        and line.get("method") == "/chat.v1.IngestService/IngestEvents"
    ]
    assert ingest_calls, "no access line for IngestEvents"
    assert ingest_calls[0]["trace_id"] == trace_id
    assert ingest_calls[0]["span_id"] in {span.span_id for span in trace}
    assert ingest_calls[0]["request_id"]
    webhook_lines = [
        line
        for line in json_lines(traced.logs / "bridge.log")
        if line.get("logger") == "aiohttp.access" and "/webhooks/whatsapp/acme" in line["event"]
    ]
    assert [line.get("trace_id") for line in webhook_lines] == [trace_id]


async def test_webhooks_sent_together_in_one_call_each_keep_their_own_trace(
    stack: Endpoints, platforms: Platforms, tmp_path: Path
) -> None:
    """With one call at a time, the webhooks that arrive while it is in flight go together in
    the next: each is still the root of its own trace, which holds its reply and delivery;
    the server applies each of those carried in another's call under its own trace."""
    webhooks = 8
    async with (
        traced_service(
            stack, platforms, tmp_path, bridge_env={"CHAT_BRIDGE_CALLS_AT_ONCE": "1"}
        ) as traced,
        aiohttp.ClientSession() as http,
    ):
        receiver = traced.receiver

        answers = await asyncio.gather(
            *(
                post_webhook(http, traced.bridge_url, whatsapp_text(f"1555002{n:04d}", "hi?")[0])
                for n in range(webhooks)
            )
        )
        assert [status for status, _ in answers] == [200] * webhooks
        async with http.get(f"{traced.bridge_url}/metrics") as response:
            metrics = await response.text()
        calls = next(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("chat_bridge_webhooks_per_call_count")
        )
        carried = webhooks - int(calls)  # webhooks that went in another one's call
        assert carried >= 1, "no two webhooks went in one call"

        async def every_root() -> bool:
            return len([s for s in receiver.spans if bridge_webhook(s)]) == webhooks

        await eventually(every_root, "every webhook's span")
        replied = {
            ("chat-bridge", "POST /webhooks/whatsapp/{tenant_id}"),
            ("chat-server", "reply.job"),
            ("chat-server", "reply.respond"),
            ("chat-server", "delivery.send"),
        }
        traces = [
            await whole_trace(
                receiver, is_root=functools.partial(operator.is_, root), expected=replied
            )
            for root in [s for s in receiver.spans if bridge_webhook(s)]
        ]
    assert [orphans(trace) for trace in traces] == [[]] * webhooks
    continued = [trace for trace in traces if ("chat-server", "ingest.webhook") in names(trace)]
    assert len(continued) == carried
    # A webhook carried in another's call has no call of its own in its trace.
    for trace in continued:
        assert ("chat-bridge", "/chat.v1.IngestService/IngestEvents") not in names(trace)


def names(trace: list[ReceivedSpan]) -> set[tuple[str, str]]:
    return {(span.service, span.name) for span in trace}


async def post_webhook(
    http: aiohttp.ClientSession, bridge_url: str, payload: Mapping[str, Any]
) -> tuple[int, str]:
    """A signed WhatsApp webhook into the bridge: the status and body of its answer."""
    body = json.dumps(payload).encode()
    signature = hmac.new(WHATSAPP_SECRET.encode(), body, hashlib.sha256).hexdigest()
    async with http.post(
        f"{bridge_url}/webhooks/whatsapp/acme",
        data=body,
        headers={"Content-Type": "application/json", "X-Hub-Signature-256": f"sha256={signature}"},
    ) as response:
        return response.status, await response.text()


def json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def bridge_webhook(span: ReceivedSpan) -> bool:
    return span.service == "chat-bridge" and span.kind == "SERVER"


async def whole_trace(
    receiver: Receiver,
    *,
    is_root: Callable[[ReceivedSpan], bool],
    expected: set[tuple[str, str]],
    within: float = 60,
) -> list[ReceivedSpan]:
    """The trace of the first root span ``is_root`` accepts, once every ``expected`` (service,
    name) is in, and every parent too (a parent is exported after its children, when it
    ends)."""
    trace: list[ReceivedSpan] = []

    async def complete() -> bool:
        nonlocal trace
        roots = [s for s in receiver.spans if not s.parent_span_id and is_root(s)]
        if not roots:
            return False
        trace = receiver.trace(roots[0].trace_id)
        found = {(span.service, span.name) for span in trace}
        return found >= expected and not orphans(trace)

    try:
        await eventually(complete, "the whole trace", within=within, interval=0.25)
    except AssertionError:
        found = sorted({(s.service, s.name) for s in trace})
        missing = sorted(expected - set(found))
        raise AssertionError(
            f"missing {missing}; found {found}; orphans {orphans(trace)}"
        ) from None
    return trace


async def test_send_message_a_stream_and_a_queued_webhook_are_traced_too(
    stack: Endpoints, platforms: Platforms, tmp_path: Path
) -> None:
    """SendMessage's trace goes from its server span through the transaction and the relay to
    the worker; StreamConversationEvents has its server span, ended with the stream; a webhook
    too large to apply within the call is applied later from the inbox, in its trace."""
    send = "/chat.v1.ChatService/SendMessage"
    stream_method = "/chat.v1.ChatService/StreamConversationEvents"
    async with (
        traced_service(stack, platforms, tmp_path) as traced,
        grpc.aio.insecure_channel(traced.target) as channel,
    ):
        client = ChatClient(channel, "acme")
        first = await client.send("hello")
        stream = Stream(client, first.conversation.id)
        await stream.live()
        sent = await client.send("again", user_id=first.message.sender_id)
        assert [m.id for m in await stream.messages(1)] == [sent.message.id]
        stream.cancel()
        await stream.wait_ended()
        receiver = traced.receiver
        trace = await whole_trace(
            receiver,
            is_root=lambda s: s.name == send,
            expected={
                ("chat-server", send),
                ("chat-server", "message.store"),
                ("chat-server", "outbox.relay"),
                ("chat-worker", "worker.handle"),
                ("chat-worker", "worker.handler"),
            },
        )

        async def stream_span() -> bool:
            return any(s.name == stream_method for s in receiver.spans)

        await eventually(stream_span, "the stream's span")

        payload, _ = whatsapp_batches.statuses(MAX_BATCH + 1)  # past one call: applied later
        async with aiohttp.ClientSession() as http:
            status, text = await post_webhook(http, traced.bridge_url, payload)
        assert status == 200, text
        queued = await whole_trace(
            receiver,
            is_root=bridge_webhook,
            expected={
                ("chat-bridge", "/chat.v1.IngestService/IngestEvents"),
                ("chat-server", "/chat.v1.IngestService/IngestEvents"),
                ("chat-server", "ingest.inbox"),
            },
        )
    assert [s.name for s in trace if not s.parent_span_id] == [send]
    assert orphans(trace) == []
    [stream_call] = [s for s in receiver.spans if s.name == stream_method]
    assert (stream_call.service, stream_call.kind) == ("chat-server", "SERVER")
    assert stream_call.attributes["rpc.method"] == "StreamConversationEvents"
    assert [s.name for s in queued if not s.parent_span_id] == [
        "POST /webhooks/whatsapp/{tenant_id}"
    ]
    assert orphans(queued) == []
