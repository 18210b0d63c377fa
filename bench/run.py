"""``make bench``: measures the service next to the bare framework, on the embedded stack.

Every gRPC figure has a baseline beside it: a bare grpc.aio echo server driven by the same load
client at the same concurrency, on the same machine, in the same run, because absolute figures
on a shared machine drift. CPU per request is read from each server process's own accounting
(/proc/<pid>/stat), not from wall time. The load client runs in this process; its own CPU use is
reported so that a saturated client shows (it is the bottleneck when it uses a whole core).

Measured so far: the echo baseline and SendMessage (text, full chain) at 1 and 64 in flight.
History, webhook ingest and fan-out come with the rest of the benchmark work (issue 7).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc

from chat.v1 import chat_service_pb2, chat_service_pb2_grpc, common_pb2
from devstack.processes import free_port, script_path
from devstack.stack import EmbeddedStack
from devstack.tokens import mint_dev_token

RESULTS = Path(__file__).resolve().parent / "results.json"
DURATION_SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
SECRET = "bench-secret-long-enough-for-hs256-signing"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Figure:
    """One line of the results."""

    name: str
    value: float
    unit: str
    target: str
    met: bool | None
    baseline: float | None = None


@dataclass
class Load:
    """What one load run measured."""

    requests: int
    seconds: float
    latencies: list[float]
    server_cpu_seconds: float
    client_cpu_seconds: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    @property
    def cpu_ms_per_request(self) -> float:
        return self.server_cpu_seconds / self.requests * 1000


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far (its own accounting)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def drive(
    call: Callable[[], Awaitable[Any]], *, in_flight: int, seconds: float, server_pid: int
) -> Load:
    """Keep ``in_flight`` calls going for ``seconds``; every call's latency is kept."""
    for _ in range(20):  # warm up connections and caches
        await call()
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    cpu_server, cpu_client = process_cpu(server_pid), own_cpu()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    elapsed = time.perf_counter() - started
    return Load(
        requests=len(latencies),
        seconds=elapsed,
        latencies=latencies,
        server_cpu_seconds=process_cpu(server_pid) - cpu_server,
        client_cpu_seconds=own_cpu() - cpu_client,
    )


def start(argv: list[str], env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    """Start a server process and wait until it listens."""
    process = subprocess.Popen(  # noqa: S603 - our own commands
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 60
    while not _port_open(port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{argv[0]} did not start listening on {port}")
        time.sleep(0.1)
    return process


def _port_open(port: int) -> bool:
    import socket  # noqa: PLC0415

    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


async def bench(stack_env: dict[str, str], tmp: Path) -> list[Figure]:
    echo_port, chat_port = free_port(), free_port()
    tenants = tmp / "tenants.yaml"
    tenants.write_text("tenants:\n  - id: bench\n")
    env = {
        **os.environ,
        **stack_env,
        "CHAT_GRPC_ADDRESS": f"127.0.0.1:{chat_port}",
        "CHAT_METRICS_ADDRESS": "off",
        "CHAT_TENANTS_FILE": str(tenants),
        "CHAT_JWT_SECRET": SECRET,
        "CHAT_JWT_ISSUER": "chat-service-dev",
        "CHAT_JWT_AUDIENCE": "chat-service",
        "CHAT_RATE_LIMIT_TENANT_RPS": "1000000",
        "CHAT_RATE_LIMIT_TENANT_BURST": "1000000",
        "CHAT_RATE_LIMIT_USER_RPS": "1000000",
        "CHAT_RATE_LIMIT_USER_BURST": "1000000",
        "CHAT_LOG_LEVEL": "warning",
    }
    echo = start([sys.executable, "-m", "bench.echo_server", str(echo_port)], env, echo_port)
    chat = start([script_path("chat-server")], env, chat_port)
    figures: list[Figure] = []
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{echo_port}") as echo_channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{chat_port}") as chat_channel,
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
            token = mint_dev_token(secret=SECRET, tenant_id="bench")
            metadata = (("authorization", f"Bearer {token}"),)

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
                    ping, in_flight=in_flight, seconds=DURATION_SECONDS, server_pid=echo.pid
                )
                real = await drive(
                    send, in_flight=in_flight, seconds=DURATION_SECONDS, server_pid=chat.pid
                )
                figures += figures_for(in_flight, base, real)
    finally:
        for process in (chat, echo):
            process.terminate()
            process.wait(20)
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
        Figure(
            f"{tag}_client_cpu_share",
            round(real.client_cpu_seconds / real.seconds, 2),
            "cores",
            "< 1 (client not saturated)",
            real.client_cpu_seconds / real.seconds < 0.9,
        ),
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
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        stack = EmbeddedStack(data_dir=tmp / "stack", environ=os.environ)
        endpoints = stack.start()
        try:
            figures = asyncio.run(bench(endpoints.as_env(), tmp))
        finally:
            stack.stop()
    print(f"{'figure':52} {'value':>12} {'unit':12} {'baseline':>10}  target")
    for figure in figures:
        base = "" if figure.baseline is None else f"{figure.baseline}"
        met = "" if figure.met is None else (" met" if figure.met else " NOT met")
        print(
            f"{figure.name:52} {figure.value:>12} {figure.unit:12} {base:>10}  {figure.target}{met}"
        )
    for figure in figures:
        print(f"{figure.name}: {figure.value} {figure.unit} ({figure.target or 'no target'})")
    RESULTS.write_text(json.dumps([asdict(f) for f in figures], indent=2) + "\n")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
