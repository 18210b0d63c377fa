"""``make bench``: measures the service next to the bare framework, on the embedded stack.

Every gRPC figure has a baseline beside it: a bare grpc.aio echo server driven by the same load
client at the same concurrency, on the same machine, in the same run, because absolute figures
on a shared machine drift; webhook ingest is measured next to a bare aiohttp handler. CPU per
request is read from each server process's own accounting (/proc/<pid>/stat), not from wall
time. The load client runs in this process; its own CPU use is reported with each figure, so a
saturated client shows (it is the bottleneck when it uses a whole core). SendMessage and the
webhooks' pipeline are measured next to the database floor too (bench/floor.py): a bare client
writing the same documents on the same embedded server, in a database of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.internal import api_implementation
from pymongo import AsyncMongoClient

from bench import fanout, floor_figures, history, ingest, ingest_batch, tracing, web
from bench.common import (
    DURATION_SECONDS,
    SECRET,
    WARMUP_CALLS,
    DatabaseWatch,
    Figure,
    Load,
    client_figure,
    drive,
    mean_batch,
    send_message_call,
    start,
)
from chat.v1 import chat_service_pb2, common_pb2
from devstack.processes import free_port, script_path
from devstack.stack import EmbeddedStack
from devstack.tokens import mint_dev_token

RESULTS = Path(__file__).resolve().parent / "results.json"
PARTS = ("send_message", "ingest", "ingest_batch", "fanout", "web", "tracing", "history")
DATABASE = "chat_bench"


async def bench(stack_env: dict[str, str], tmp: Path, parts: frozenset[str]) -> list[Figure]:
    echo_port, chat_port, metrics_port = free_port(), free_port(), free_port()
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
        # Its metrics (the group commit's batch sizes, for the database floor) on a port of its
        # own: the other parts start servers of their own with ``env``.
        chat = start(
            [script_path("chat-server")],
            {**env, "CHAT_METRICS_ADDRESS": f"127.0.0.1:{metrics_port}"},
            chat_port,
        )
        metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        mongodb_uri = stack_env["CHAT_MONGODB_URI"]
        database = DatabaseWatch(mongodb_uri, metrics_url=metrics)
        target = f"127.0.0.1:{chat_port}"
        try:
            await floor_figures.reset(mongodb_uri)
            token = mint_dev_token(secret=SECRET, tenant_id="bench")
            metadata = (("authorization", f"Bearer {token}"),)
            if "send_message" in parts:
                figures += await _timed(
                    "send_message",
                    send_message(
                        echo_port,
                        target,
                        metadata,
                        echo.pid,
                        chat.pid,
                        database=database,
                        mongodb_uri=mongodb_uri,
                    ),
                )
            if "ingest" in parts:
                figures += await _timed("ingest", measure_ingest(env, target, chat.pid, database))
            if "ingest_batch" in parts:
                figures += await _timed("ingest_batch", ingest_batch.measure(env, mongodb_uri))
            if "fanout" in parts:
                figures += await _timed(
                    "fanout",
                    measure_fanout(env, stack_env["CHAT_REDIS_URL"], target, metadata, chat.pid),
                )
            if "web" in parts:
                figures += await _timed("web", web.measure(env, target, metadata, chat.pid))
            if "tracing" in parts:
                figures += await _timed("tracing", tracing.measure(env, metadata, mongodb_uri))
            if "history" in parts:
                # Last: it loads a million messages (and leaves out two of their indexes,
                # which the next server to start would build).
                async with grpc.aio.insecure_channel(target) as channel:
                    figures += await _timed(
                        "history", history.measure(channel, metadata, mongodb_uri, DATABASE)
                    )
        finally:
            database.close()
            for process in (chat, echo):
                process.terminate()
                process.wait(20)
            # Once the servers are gone: a drop beside another's open transaction can stall
            # the embedded store.
            await floor_figures.reset(mongodb_uri)
    return figures


async def measure_ingest(
    env: dict[str, str], target: str, chat_pid: int, database: DatabaseWatch
) -> list[Figure]:
    """Webhook ingest next to bare aiohttp, the whole pipeline (to the last delivered reply),
    and the same webhooks' database floor."""
    uri = env["CHAT_MONGODB_URI"]
    stored_before = await _ingested(uri)
    ingested = await ingest.measure(env, target, chat_pid, database)
    window, window_end = database.history[-2:]  # the service's measurement (drive's samples)
    # The replies and deliveries the webhooks queued are worked off before the next figure,
    # which would otherwise measure that backlog too.
    started = time.monotonic()
    await drained(uri)
    drain_seconds = time.monotonic() - started
    ended = database.sample()
    # Every webhook stored in the window, those answered too late (refused) included: the
    # database did their work, and their replies were delivered.
    stored = await _ingested(uri) - stored_before - WARMUP_CALLS
    service = floor_figures.Pipeline(
        webhooks=stored,
        rps=stored / (window_end.time - window.time + drain_seconds),
        database_cpu_seconds=ended.cpu_seconds - window.cpu_seconds,
        database_requests=ended.requests - window.requests,
        batches={call: mean_batch(window, ended, call) for call in ("ingest", "reply", "delivery")},
    )
    floor = await floor_figures.webhooks(uri, service=service, database=database)
    return [
        *ingested,
        ingest.replied_figure(ingested, drain_seconds=drain_seconds),
        *floor,
    ]


async def _timed(part: str, work: Awaitable[list[Figure]]) -> list[Figure]:
    """A part's figures, and how long it took (printed as it ends)."""
    started = time.monotonic()
    figures = await work
    print(f"part {part}: {time.monotonic() - started:.0f} s", flush=True)
    return figures


async def _ingested(mongodb_uri: str) -> int:
    """How many platform events the service has recorded as ingested."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_uri)
    try:
        return await client[DATABASE]["ingested_events"].count_documents({})
    finally:
        await client.close()


async def measure_fanout(
    env: dict[str, str], redis_url: str, target: str, metadata: Any, chat_pid: int
) -> list[Figure]:
    """The service's fan-out, then the bare baseline's on the same Redis, same client."""
    ours = await fanout.run(target, metadata, chat_pid)
    port = free_port()
    base = start([sys.executable, "-m", "bench.fanout_baseline", str(port), redis_url], env, port)
    try:
        baseline = await fanout.run(f"127.0.0.1:{port}", metadata, base.pid)
    finally:
        base.terminate()
        base.wait(20)
    return fanout.figures(ours, baseline)


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
    echo_port: int,
    target: str,
    metadata: Any,
    echo_pid: int,
    chat_pid: int,
    *,
    database: DatabaseWatch,
    mongodb_uri: str,
) -> list[Figure]:
    """SendMessage (text, full chain) at 1 and 64 in flight, next to the echo server; at 64,
    next to the database floor too."""
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
        send = send_message_call(chat_channel, metadata)

        async def ping() -> Any:
            return await echo_call(payload, timeout=30)

        for in_flight in (1, 64):
            base = await drive(
                ping, in_flight=in_flight, seconds=DURATION_SECONDS, server_pids=(echo_pid,)
            )
            floored = in_flight == floor_figures.IN_FLIGHT
            # For the floor: the conversations the service starts from.
            active = await floor_figures.active_web_users(mongodb_uri, DATABASE) if floored else []
            real = await drive(
                send,
                in_flight=in_flight,
                seconds=DURATION_SECONDS,
                server_pids=(chat_pid,),
                database=database,
            )
            measured = figures_for(in_flight, base, real)
            if floored:
                measured += await floor_figures.send_message(
                    mongodb_uri,
                    service=real,
                    service_figures=measured,
                    service_batch=mean_batch(
                        database.history[-2], database.history[-1], "send_message"
                    ),
                    active_users=active,
                    database=database,
                )
            figures += measured
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
        db_cpu_ms, db_requests = real.database_per_request()
        if real.database_cpu_seconds:  # zero: a database elsewhere, whose CPU is not seen
            figures.append(Figure(f"{tag}_db_cpu_per_request", round(db_cpu_ms, 3), "ms", "", None))
        figures.append(
            Figure(f"{tag}_db_requests_per_request", round(db_requests, 2), "requests", "", None)
        )
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
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        stack = EmbeddedStack(data_dir=tmp / "stack", environ=os.environ)
        endpoints = stack.start()
        try:
            figures = asyncio.run(bench(endpoints.as_env(), tmp, parts))
        finally:
            stack.stop()
    if parts == frozenset(PARTS):
        # The whole run, from starting the stack to stopping it (a partial run keeps the
        # last whole run's).
        minutes = round((time.monotonic() - started) / 60, 1)
        figures.append(Figure("bench_run_minutes", minutes, "minutes", "< 10", minutes < 10))
    print(f"{'figure':52} {'value':>12} {'unit':14} {'baseline':>10}  target")
    for figure in figures:
        base = "" if figure.baseline is None else f"{figure.baseline}"
        met = "" if figure.met is None else (" met" if figure.met else " NOT met")
        print(
            f"{figure.name:52} {figure.value:>12} {figure.unit:14} {base:>10}  {figure.target}{met}"
        )
    for figure in figures:
        print(f"{figure.name}: {figure.value} {figure.unit} ({figure.target or 'no target'})")
    written = [asdict(f) for f in figures]
    if parts != frozenset(PARTS):
        # A partial run replaces its own figures and keeps the others' (from earlier runs).
        fresh = {figure["name"] for figure in written}
        kept = [f for f in json.loads(RESULTS.read_text()) if f["name"] not in fresh]
        written = kept + written
        print(f"a partial run (BENCH_ONLY): its figures replace theirs in {RESULTS}")
    RESULTS.write_text(json.dumps(written, indent=2) + "\n")
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
