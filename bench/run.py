"""``make bench``: measures the service next to the bare framework, on the embedded stack.

Every gRPC figure has a baseline beside it: a bare grpc.aio echo server driven by the same load
client at the same concurrency, on the same machine, in the same run, because absolute figures
on a shared machine drift; webhook ingest is measured next to a bare aiohttp handler. CPU per
request is read from each server process's own accounting (/proc/<pid>/stat), not from wall
time. The load client runs in this process; its own CPU use is reported with each figure, so a
saturated client shows (it is the bottleneck when it uses a whole core).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.internal import api_implementation
from pymongo import AsyncMongoClient

from bench import fanout, history, ingest, ingest_batch, web
from bench.common import (
    DURATION_SECONDS,
    SECRET,
    Figure,
    Load,
    client_figure,
    drive,
    start,
)
from chat.v1 import chat_service_pb2, chat_service_pb2_grpc, common_pb2
from devstack.processes import free_port, script_path
from devstack.stack import EmbeddedStack
from devstack.tokens import mint_dev_token

RESULTS = Path(__file__).resolve().parent / "results.json"
PARTS = ("send_message", "ingest", "ingest_batch", "fanout", "history", "web")
DATABASE = "chat_bench"


async def bench(stack_env: dict[str, str], tmp: Path, parts: frozenset[str]) -> list[Figure]:
    echo_port, chat_port = free_port(), free_port()
    tenants = tmp / "tenants.yaml"
    tenants.write_text(
        "tenants:\n"
        "  - id: bench\n"
        "    channels:\n"
        "      whatsapp:\n"
        f"        app_secret: {ingest.APP_SECRET}\n"
        "        access_token: bench-token\n"
        "        verify_token: bench-verify\n"
        f'        phone_number_id: "{ingest.PHONE_NUMBER_ID}"\n'
        + web.TENANT_WEB.replace("    channels:\n", "")
    )
    figures: list[Figure] = []
    async with ingest.graph_stand_in() as graph_url:
        env = {
            **os.environ,
            **stack_env,
            "CHAT_GRPC_ADDRESS": f"127.0.0.1:{chat_port}",
            "CHAT_METRICS_ADDRESS": "off",
            "CHAT_MONGODB_DATABASE": DATABASE,
            "CHAT_TENANTS_FILE": str(tenants),
            "CHAT_JWT_SECRET": SECRET,
            "CHAT_JWT_ISSUER": "chat-service-dev",
            "CHAT_JWT_AUDIENCE": "chat-service",
            "CHAT_RATE_LIMIT_TENANT_RPS": "1000000",
            "CHAT_RATE_LIMIT_TENANT_BURST": "1000000",
            "CHAT_RATE_LIMIT_USER_RPS": "1000000",
            "CHAT_RATE_LIMIT_USER_BURST": "1000000",
            "CHAT_WHATSAPP_API_BASE": graph_url,
            "CHAT_LOG_LEVEL": "warning",
        }
        echo = start([sys.executable, "-m", "bench.echo_server", str(echo_port)], env, echo_port)
        chat = start([script_path("chat-server")], env, chat_port)
        target = f"127.0.0.1:{chat_port}"
        try:
            token = mint_dev_token(secret=SECRET, tenant_id="bench")
            metadata = (("authorization", f"Bearer {token}"),)
            if "send_message" in parts:
                figures += await send_message(echo_port, target, metadata, echo.pid, chat.pid)
            if "ingest" in parts:
                ingested = await ingest.measure(env, target, chat.pid)
                # The replies and deliveries the webhooks queued are worked off before the
                # next figure, which would otherwise measure that backlog too.
                started = time.monotonic()
                await drained(stack_env["CHAT_MONGODB_URI"])
                figures += ingested
                figures.append(
                    ingest.replied_figure(ingested, drain_seconds=time.monotonic() - started)
                )
            if "ingest_batch" in parts:
                figures += await ingest_batch.measure(
                    env, target, stack_env["CHAT_MONGODB_URI"], DATABASE
                )
                await drained(stack_env["CHAT_MONGODB_URI"])
            if "fanout" in parts:
                figures += await fanout.measure(target, metadata, chat.pid)
            if "web" in parts:
                figures += await web.measure(env, target, metadata, chat.pid)
            if "history" in parts:
                async with grpc.aio.insecure_channel(target) as channel:
                    figures += await history.measure(
                        channel, metadata, stack_env["CHAT_MONGODB_URI"], DATABASE
                    )
        finally:
            for process in (chat, echo):
                process.terminate()
                process.wait(20)
    return figures


async def drained(mongodb_uri: str, within: float = 180) -> None:
    """Until the ingest inbox and the reply and delivery queues are empty (or ``within``
    seconds)."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_uri)
    try:
        database = client[DATABASE]
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            waiting = await database["ingest_inbox"].count_documents({})
            waiting += await database["reply_jobs"].count_documents({})
            waiting += await database["deliveries"].count_documents(
                {"state": {"$in": ["queued", "sending"]}}
            )
            if not waiting:
                return
            await asyncio.sleep(1)
        print(f"queues not drained in {within:.0f} s; measuring anyway")
    finally:
        await client.close()


async def send_message(
    echo_port: int, target: str, metadata: Any, echo_pid: int, chat_pid: int
) -> list[Figure]:
    """SendMessage (text, full chain) at 1 and 64 in flight, next to the echo server."""
    figures: list[Figure] = []
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{echo_port}") as echo_channel,
        grpc.aio.insecure_channel(target) as chat_channel,
    ):
        payload = chat_service_pb2.SendMessageRequest(
            user_id="u",
            channel=common_pb2.CHANNEL_TYPE_WEB,
            content=common_pb2.Content(text=common_pb2.TextContent(text="hello there")),
        ).SerializeToString()
        echo_call = echo_channel.unary_unary(
            "/bench.Echo/Echo", request_serializer=None, response_deserializer=None
        )
        stub = chat_service_pb2_grpc.ChatServiceStub(chat_channel)

        async def send() -> Any:
            # A user per call would start a conversation each time; a few hundred users
            # keep conversations busy the way real traffic does.
            request = chat_service_pb2.SendMessageRequest(
                user_id=f"user-{uuid.uuid4().int % 500}",
                channel=common_pb2.CHANNEL_TYPE_WEB,
                content=common_pb2.Content(text=common_pb2.TextContent(text="hello there")),
            )
            return await stub.SendMessage(request, metadata=metadata, timeout=30)

        async def ping() -> Any:
            return await echo_call(payload, timeout=30)

        for in_flight in (1, 64):
            base = await drive(
                ping, in_flight=in_flight, seconds=DURATION_SECONDS, server_pids=(echo_pid,)
            )
            real = await drive(
                send, in_flight=in_flight, seconds=DURATION_SECONDS, server_pids=(chat_pid,)
            )
            figures += figures_for(in_flight, base, real)
    return figures


def figures_for(in_flight: int, base: Load, real: Load) -> list[Figure]:
    tag = f"send_message_{in_flight}_in_flight"
    ratio = real.rps / base.rps
    cpu_ratio = real.cpu_ms_per_request / base.cpu_ms_per_request
    figures = [
        Figure(f"{tag}_rps", round(real.rps, 1), "requests/s", "", None, round(base.rps, 1)),
        Figure(
            f"{tag}_p50",
            round(real.percentile(0.5), 2),
            "ms",
            "",
            None,
            round(base.percentile(0.5), 2),
        ),
        Figure(
            f"{tag}_p99",
            round(real.percentile(0.99), 2),
            "ms",
            "< 250 ms" if in_flight == 64 else "",
            real.percentile(0.99) < 250 if in_flight == 64 else None,
            round(base.percentile(0.99), 2),
        ),
        Figure(
            f"{tag}_server_cpu_per_request",
            round(real.cpu_ms_per_request, 3),
            "ms",
            "<= 4x echo" if in_flight == 64 else "",
            cpu_ratio <= 4 if in_flight == 64 else None,
            round(base.cpu_ms_per_request, 3),
        ),
        client_figure(tag, real.client_cores),
    ]
    if in_flight == 64:
        figures.append(
            Figure(
                f"{tag}_throughput_ratio",
                round(ratio, 3),
                "x echo",
                ">= 0.15x",
                ratio >= 0.15,
                round(base.rps, 1),
            )
        )
    return figures


def main() -> None:
    """Entry point of ``make bench``."""
    # The C (upb) backend parses and serializes; the pure-Python one would be several times
    # slower and distort every figure.
    print(f"protobuf backend: {api_implementation.Type()}")
    parts = _parts(os.environ.get("BENCH_ONLY", ""))
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        stack = EmbeddedStack(data_dir=tmp / "stack", environ=os.environ)
        endpoints = stack.start()
        try:
            figures = asyncio.run(bench(endpoints.as_env(), tmp, parts))
        finally:
            stack.stop()
    print(f"{'figure':52} {'value':>12} {'unit':14} {'baseline':>10}  target")
    for figure in figures:
        base = "" if figure.baseline is None else f"{figure.baseline}"
        met = "" if figure.met is None else (" met" if figure.met else " NOT met")
        print(
            f"{figure.name:52} {figure.value:>12} {figure.unit:14} {base:>10}  {figure.target}{met}"
        )
    for figure in figures:
        print(f"{figure.name}: {figure.value} {figure.unit} ({figure.target or 'no target'})")
    if parts != frozenset(PARTS):
        print("a partial run (BENCH_ONLY): bench/results.json is left as it was")
        return
    RESULTS.write_text(json.dumps([asdict(f) for f in figures], indent=2) + "\n")
    print(f"written to {RESULTS}")


def _parts(only: str) -> frozenset[str]:
    """The parts BENCH_ONLY names (comma-separated), or all of them."""
    names = frozenset(name.strip() for name in only.split(",") if name.strip())
    unknown = names - frozenset(PARTS)
    if unknown:
        raise SystemExit(f"BENCH_ONLY: unknown {sorted(unknown)}; the parts are {list(PARTS)}")
    return names or frozenset(PARTS)


if __name__ == "__main__":
    main()
