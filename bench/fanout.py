"""Fan-out: 1,000 StreamConversationEvents subscribers of one conversation. Latency is until
the message is received by every subscriber, from SendMessage's acknowledgement and from the
call's start; memory is the chat server's resident growth per open stream. The same client
drives the baseline (bench/fanout_baseline.py: a bare grpc.aio server fanning one Redis
pub/sub message out to its streams), and the service's p99 is held to it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any

import grpc

from bench.common import Figure, client_figure, own_cpu, percentile, resident_bytes
from chat.v1 import chat_service_pb2, chat_service_pb2_grpc, common_pb2

SUBSCRIBERS = int(os.environ.get("BENCH_SUBSCRIBERS", "1000"))
SENDS = 100
#: Streams per client connection: HTTP/2 servers commonly cap concurrent streams at 100.
PER_CHANNEL = 100


@dataclass(frozen=True)
class Run:
    """What one server's fan-out measured."""

    latencies: list[float]  # from the acknowledgement to the last subscriber, ms
    from_send: list[float]  # from the call's start to the last subscriber, ms
    per_subscriber: float  # resident growth per open stream, KiB
    client_cores: float


async def run(target: str, metadata: Any, server_pid: int) -> Run:
    """Open the subscribers on the server at ``target``, send, and time every arrival."""
    channels = [grpc.aio.insecure_channel(target) for _ in range(-(-SUBSCRIBERS // PER_CHANNEL))]
    stub = chat_service_pb2_grpc.ChatServiceStub(channels[0])
    first = await stub.SendMessage(
        chat_service_pb2.SendMessageRequest(
            user_id="fanout-user",
            channel=common_pb2.CHANNEL_TYPE_WEB,
            content=common_pb2.Content(text=common_pb2.TextContent(text="hello")),
        ),
        metadata=metadata,
        timeout=30,
    )
    conversation_id = first.conversation.id
    after = first.conversation.last_sequence
    #: message id -> arrival times, one per subscriber
    arrivals: dict[str, list[float]] = {}
    progress = asyncio.Event()  # set when a message has reached every subscriber
    subscribed = 0
    all_subscribed = asyncio.Event()

    async def subscribe(channel: grpc.aio.Channel) -> None:
        nonlocal subscribed
        call = chat_service_pb2_grpc.ChatServiceStub(channel).StreamConversationEvents(
            chat_service_pb2.StreamConversationEventsRequest(
                conversation_id=conversation_id, after_sequence=after
            ),
            metadata=metadata,
        )
        await call.wait_for_connection()
        subscribed += 1
        if subscribed == SUBSCRIBERS:
            all_subscribed.set()
        async for event in call:
            if event.WhichOneof("event") == "message":
                seen = arrivals.setdefault(event.message.id, [])
                seen.append(time.perf_counter())
                if len(seen) == SUBSCRIBERS:
                    progress.set()

    rss_before = resident_bytes(server_pid)
    tasks = [
        asyncio.create_task(subscribe(channels[index // PER_CHANNEL]))
        for index in range(SUBSCRIBERS)
    ]
    try:
        await asyncio.wait_for(all_subscribed.wait(), 120)
        await asyncio.sleep(2)  # every stream past its replay and listening
        rss_after = resident_bytes(server_pid)
        latencies, from_send = [], []
        cpu_before, started = own_cpu(), time.perf_counter()
        for _ in range(SENDS):
            calling = time.perf_counter()
            sent = await stub.SendMessage(
                chat_service_pb2.SendMessageRequest(
                    user_id="fanout-user",
                    conversation_id=conversation_id,
                    channel=common_pb2.CHANNEL_TYPE_WEB,
                    content=common_pb2.Content(text=common_pb2.TextContent(text="to everyone")),
                ),
                metadata=metadata,
                timeout=30,
            )
            acknowledged = time.perf_counter()
            message_id = sent.message.id
            while len(arrivals.get(message_id, ())) < SUBSCRIBERS:
                progress.clear()
                try:
                    await asyncio.wait_for(progress.wait(), 30)
                except TimeoutError:
                    raise RuntimeError("a subscriber did not get the message in 30 s") from None
            last = max(arrivals[message_id])
            # Events are pushed before the call returns, so most arrive before the
            # acknowledgement: that latency is clamped at 0, and the one from the call's start
            # (SendMessage itself included) is the figure held to the target.
            latencies.append(max(0.0, last - acknowledged))
            from_send.append(last - calling)
        client_cores = (own_cpu() - cpu_before) / (time.perf_counter() - started)
    finally:
        await _close(tasks, channels)
    per_subscriber = (rss_after - rss_before) / SUBSCRIBERS / 1024
    return Run(latencies, from_send, per_subscriber, client_cores)


async def _close(tasks: list[asyncio.Task[None]], channels: list[grpc.aio.Channel]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await task
    for channel in channels:
        await channel.close(None)


def figures(ours: Run, base: Run) -> list[Figure]:
    """The service's figures, each beside the baseline's, and the p99 as a ratio."""
    p99, base_p99 = percentile(ours.from_send, 0.99), percentile(base.from_send, 0.99)
    ratio = p99 / base_p99
    return [
        Figure(
            "fanout_ack_to_all_p99",
            round(percentile(ours.latencies, 0.99), 2),
            "ms",
            "",
            None,
            round(percentile(base.latencies, 0.99), 2),
        ),
        Figure(
            "fanout_send_to_all_p50",
            round(percentile(ours.from_send, 0.5), 2),
            "ms",
            "",
            None,
            round(percentile(base.from_send, 0.5), 2),
        ),
        Figure(
            "fanout_send_to_all_p99", round(p99, 2), "ms", "< 100 ms", p99 < 100, round(base_p99, 2)
        ),
        Figure(
            "fanout_send_to_all_p99_ratio",
            round(ratio, 2),
            "x baseline",
            "<= 1.5x",
            ratio <= 1.5,
            round(base_p99, 2),
        ),
        Figure(
            "fanout_memory_per_subscriber",
            round(ours.per_subscriber, 1),
            "KiB",
            "< 64 KiB",
            ours.per_subscriber < 64,
            round(base.per_subscriber, 1),
        ),
        client_figure("fanout", max(ours.client_cores, base.client_cores)),
    ]
