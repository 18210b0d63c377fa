"""The web path: N visitors on the bridge's WebSocket gateway, each sending and waiting for
the bot's reply frame, beside the same messages over gRPC at the same concurrency; and the
gateway's memory per open, idle socket."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import time
import uuid
from typing import Any

import aiohttp
import grpc

from bench.common import (
    DURATION_SECONDS,
    Figure,
    Load,
    drive,
    own_cpu,
    process_cpu,
    resident_bytes,
    start,
)
from chat.v1 import chat_service_pb2, chat_service_pb2_grpc, common_pb2
from devstack.processes import free_port, script_path

SITE_KEY = "bench-site-key"
ORIGIN = "http://bench.example"
TENANT_WEB = f"    channels:\n      web: {{site_key: {SITE_KEY}, allowed_origins: ['{ORIGIN}']}}\n"
VISITORS = int(os.environ.get("BENCH_WEB_VISITORS", "1000"))


class Visitor:
    """One socket: sends a message, waits for the bot's reply frame."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._reply: asyncio.Future[None] | None = None
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            frame = json.loads(msg.data)
            reply = frame.get("type") == "message" and frame.get("direction") == "out"
            if reply and self._reply is not None and not self._reply.done():
                self._reply.set_result(None)

    async def exchange(self) -> None:
        self._reply = asyncio.get_running_loop().create_future()
        await self.ws.send_str(
            json.dumps({"type": "send", "client_id": uuid.uuid4().hex, "text": "hello there"})
        )
        await asyncio.wait_for(self._reply, 60)

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()


async def _open(http: aiohttp.ClientSession, url: str) -> Visitor:
    async with http.post(
        f"{url}/web/v1/bench/sessions",
        json={"site_key": SITE_KEY},
        headers={"Origin": ORIGIN},
    ) as response:
        token = (await response.json())["token"]
    ws = await http.ws_connect(f"{url}/web/v1/bench/socket", headers={"Origin": ORIGIN})
    await ws.send_str(json.dumps({"type": "auth", "token": token}))
    ready = json.loads((await ws.receive()).data)
    if ready.get("type") != "ready":
        raise RuntimeError(f"the gateway refused a visitor: {ready}")
    return Visitor(ws)


async def _drive_web(visitors: list[Visitor], seconds: float, pids: tuple[int, ...]) -> Load:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(visitor: Visitor) -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await visitor.exchange()
            latencies.append(time.perf_counter() - started)

    cpu_server, cpu_client = sum(map(process_cpu, pids)), own_cpu()
    started = time.perf_counter()
    await asyncio.gather(*(worker(v) for v in visitors))
    elapsed = time.perf_counter() - started
    return Load(
        requests=len(latencies),
        seconds=elapsed,
        latencies=latencies,
        server_cpu_seconds=sum(map(process_cpu, pids)) - cpu_server,
        client_cpu_seconds=own_cpu() - cpu_client,
    )


async def measure(env: dict[str, str], target: str, metadata: Any, chat_pid: int) -> list[Figure]:
    """The web figures, beside gRPC at the same concurrency."""
    port = free_port()
    bridge = start(
        [script_path("chat-bridge")],
        {
            **env,
            "CHAT_BRIDGE_HOST": "127.0.0.1",
            "CHAT_BRIDGE_PORT": str(port),
            "CHAT_SERVER_TARGET": target,
            "CHAT_WEB_SESSIONS_PER_IP_PER_MINUTE": "1000000",
            "CHAT_WEB_SOCKETS_PER_IP_PER_MINUTE": "1000000",
            "CHAT_WEB_MESSAGES_PER_MINUTE": "1000000",
        },
        port,
    )
    url = f"http://127.0.0.1:{port}"
    figures: list[Figure] = []
    connector = aiohttp.TCPConnector(limit=0)
    try:
        async with aiohttp.ClientSession(connector=connector) as http:
            warm = [await _open(http, url) for _ in range(20)]
            for visitor in warm:
                await visitor.exchange()
            gc.collect()
            await asyncio.sleep(1)
            before = resident_bytes(bridge.pid)
            visitors = [await _open(http, url) for _ in range(VISITORS)]
            await asyncio.sleep(2)
            per_socket = (resident_bytes(bridge.pid) - before) / VISITORS
            figures.append(
                Figure(
                    "web_memory_per_idle_socket",
                    round(per_socket / 1024, 1),
                    "KiB",
                    "< 64 KiB",
                    per_socket < 64 * 1024,
                )
            )
            web = await _drive_web(visitors, DURATION_SECONDS, (bridge.pid, chat_pid))
            for visitor in [*warm, *visitors]:
                await visitor.close()
        grpc_load = await _grpc(target, metadata, chat_pid)
    finally:
        bridge.terminate()
        bridge.wait(30)
    tag = f"web_{VISITORS}_visitors"
    ratio = web.percentile(0.99) / grpc_load.percentile(0.99)
    figures += [
        Figure(
            f"{tag}_replies_per_s",
            round(web.rps, 1),
            "replies/s",
            "",
            None,
            round(grpc_load.rps, 1),
        ),
        Figure(
            f"{tag}_send_to_reply_p50",
            round(web.percentile(0.5), 2),
            "ms",
            "",
            None,
            round(grpc_load.percentile(0.5), 2),
        ),
        Figure(
            f"{tag}_send_to_reply_p99",
            round(web.percentile(0.99), 2),
            "ms",
            "<= 2x gRPC p99",
            ratio <= 2,
            round(grpc_load.percentile(0.99), 2),
        ),
        Figure(
            f"{tag}_client_cpu_share",
            round(web.client_cores, 2),
            "cores",
            "< 0.9 (client not saturated)",
            web.client_cores < 0.9,
        ),
    ]
    return figures


async def _grpc(target: str, metadata: Any, chat_pid: int) -> Load:
    """The same messages over gRPC (SendMessage returns the reply), as many in flight."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = chat_service_pb2_grpc.ChatServiceStub(channel)
        users = [f"web-bench-{i}" for i in range(VISITORS)]
        turn = iter(range(10**9))

        async def send() -> Any:
            request = chat_service_pb2.SendMessageRequest(
                user_id=users[next(turn) % len(users)],
                channel=common_pb2.CHANNEL_TYPE_WEB,
                content=common_pb2.Content(text=common_pb2.TextContent(text="hello there")),
            )
            return await stub.SendMessage(request, metadata=metadata, timeout=60)

        return await drive(
            send, in_flight=VISITORS, seconds=DURATION_SECONDS, server_pids=(chat_pid,)
        )
