"""What the benchmark parts share: figures, load runs, process accounting, process start."""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack.processes import port_open

DURATION_SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
SECRET = "bench-secret-long-enough-for-hs256-signing"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


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
        return percentile(self.latencies, q)

    @property
    def cpu_ms_per_request(self) -> float:
        return self.server_cpu_seconds / self.requests * 1000

    @property
    def client_cores(self) -> float:
        return self.client_cpu_seconds / self.seconds


def percentile(seconds: list[float], q: float) -> float:
    """The q-quantile of ``seconds``, in milliseconds."""
    ordered = sorted(seconds)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far (its own accounting)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def resident_bytes(pid: int) -> int:
    """A process's resident memory."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE_BYTES


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def drive(
    call: Callable[[], Awaitable[Any]],
    *,
    in_flight: int,
    seconds: float,
    server_pids: tuple[int, ...],
) -> Load:
    """Keep ``in_flight`` calls going for ``seconds``; every call's latency is kept. The CPU
    is the sum over ``server_pids`` (the processes that serve the call)."""
    for _ in range(20):  # warm up connections and caches
        await call()
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    cpu_server, cpu_client = sum(map(process_cpu, server_pids)), own_cpu()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    elapsed = time.perf_counter() - started
    return Load(
        requests=len(latencies),
        seconds=elapsed,
        latencies=latencies,
        server_cpu_seconds=sum(map(process_cpu, server_pids)) - cpu_server,
        client_cpu_seconds=own_cpu() - cpu_client,
    )


def start(argv: list[str], env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    """Start a server process and wait until it listens."""
    process = subprocess.Popen(  # noqa: S603 - our own commands
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 60
    while not port_open("127.0.0.1", port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{argv[0]} did not start listening on {port}")
        time.sleep(0.1)
    return process


def client_figure(name: str, cores: float) -> Figure:
    """The load client's CPU: under one core, it is not what limits the figure."""
    value = round(cores, 2)
    return Figure(
        f"{name}_client_cpu_share", value, "cores", "< 0.9 (client not saturated)", value < 0.9
    )
