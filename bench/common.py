"""What the benchmark parts share: figures, load runs, process accounting, process start."""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import grpc
from prometheus_client.parser import text_string_to_metric_families
from pymongo import AsyncMongoClient, MongoClient

from chat.v1 import chat_service_pb2, chat_service_pb2_grpc, common_pb2
from devstack.processes import port_open

DURATION_SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
SECRET = "bench-secret-long-enough-for-hs256-signing"
#: The SendMessage load's users (see send_message_call).
USERS = 500
#: The calls each load run makes before it measures (one at a time).
WARMUP_CALLS = 20
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
    #: Each server process's own share of ``server_cpu_seconds``, by pid.
    cpu_seconds_by_pid: dict[int, float] = field(default_factory=dict)
    #: The database's CPU seconds and requests (wire round trips) over the run, when watched.
    database_cpu_seconds: float = 0.0
    database_requests: int = 0

    def database_per_request(self) -> tuple[float, float]:
        """The database's CPU (ms) and its requests per call of this run."""
        return (
            self.database_cpu_seconds / self.requests * 1000,
            self.database_requests / self.requests,
        )

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


def send_message_call(
    channel: grpc.aio.Channel, metadata: Any
) -> Callable[[], Awaitable[chat_service_pb2.SendMessageResponse]]:
    """The SendMessage load every bench part drives: a text from one of a few hundred users
    (a user per call would start a conversation each time; a few hundred keep conversations
    busy the way real traffic does)."""
    stub = chat_service_pb2_grpc.ChatServiceStub(channel)

    async def send() -> chat_service_pb2.SendMessageResponse:
        request = chat_service_pb2.SendMessageRequest(
            user_id=f"user-{uuid.uuid4().int % USERS}",
            channel=common_pb2.CHANNEL_TYPE_WEB,
            content=common_pb2.Content(text=common_pb2.TextContent(text="hello there")),
        )
        return await stub.SendMessage(request, metadata=metadata, timeout=30)

    return send


def percentile(seconds: list[float], q: float) -> float:
    """The q-quantile of ``seconds``, in milliseconds."""
    ordered = sorted(seconds)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far (its own accounting)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _is_database(pid: int) -> bool:
    """Whether this machine's process ``pid`` is a MongoDB-wire server."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"secantusd" in command or b"mongod" in command


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
    database: DatabaseWatch | None = None,
) -> Load:
    """Keep ``in_flight`` calls going for ``seconds``; every call's latency is kept. The CPU
    is the sum over ``server_pids`` (the processes that serve the call); the database's, when
    watched, is kept apart."""
    for _ in range(WARMUP_CALLS):  # warm up connections and caches
        await call()
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    database_before = database.sample() if database is not None else (0.0, 0)
    cpu_before, cpu_client = {pid: process_cpu(pid) for pid in server_pids}, own_cpu()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    elapsed = time.perf_counter() - started
    by_pid = {pid: process_cpu(pid) - before for pid, before in cpu_before.items()}
    database_after = database.sample() if database is not None else (0.0, 0)
    return Load(
        requests=len(latencies),
        seconds=elapsed,
        latencies=latencies,
        server_cpu_seconds=sum(by_pid.values()),
        client_cpu_seconds=own_cpu() - cpu_client,
        cpu_seconds_by_pid=by_pid,
        database_cpu_seconds=database_after[0] - database_before[0],
        database_requests=database_after[1] - database_before[1],
    )


#: call label -> (sum, count) of the service's group-commit batch sizes so far
BatchTotals = dict[str, tuple[float, float]]


class DatabaseSample(NamedTuple):
    """The database's CPU seconds and requests so far, when (time.perf_counter), and the
    service's group-commit batches so far (empty without its metrics)."""

    cpu_seconds: float
    requests: int
    time: float
    batches: BatchTotals


def histogram_totals(
    metrics_url: str, name: str, *, label: str = "", whose: str = "the service's"
) -> dict[str, tuple[float, float]] | None:
    """A histogram's (sum, count) so far on a Prometheus page, by the value of ``label`` (""
    when it has none); None when the page did not answer (``whose`` names it in the message)."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=10) as response:  # noqa: S310 - ours
            text = response.read().decode()
    except OSError as exc:
        print(f"{whose} metrics at {metrics_url} did not answer: {exc!r}")
        return None
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            value = sample.labels.get(label, "") if label else ""
            if sample.name.endswith("_sum"):
                sums[value] = sample.value
            elif sample.name.endswith("_count"):
                counts[value] = sample.value
    return {value: (sums.get(value, 0.0), count) for value, count in counts.items()}


def batch_totals(metrics_url: str) -> BatchTotals:
    """The service's group-commit batch histogram (chat_group_commit_batch_size), by call.
    Without it the database floor's batches are uncapped (they only cap them)."""
    return histogram_totals(metrics_url, "chat_group_commit_batch_size", label="call") or {}


def mean_batch(start: DatabaseSample, end: DatabaseSample, call: str) -> float | None:
    """The service's mean batch of ``call`` between two samples (None: none, or no metrics)."""
    total, batches = end.batches.get(call, (0.0, 0.0))
    before = start.batches.get(call, (0.0, 0.0))
    total, batches = total - before[0], batches - before[1]
    return total / batches if batches else None


class DatabaseWatch:
    """The MongoDB-wire server's CPU (from /proc, by the pid it reports, when it runs on this
    machine) and the requests it has served (serverStatus ``network.numRequests``: every round
    trip, the drivers' monitoring pings included, a few a second). With the service's metrics
    URL, each sample holds its group-commit batches too: a load run's samples bracket exactly
    its measurement, warm-up excluded."""

    def __init__(self, uri: str, *, metrics_url: str | None = None) -> None:
        self._metrics_url = metrics_url
        self._client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=5000)
        pid = int(self._client.admin.command("serverStatus")["pid"])
        #: None when the database is not a process of this machine (a CHAT_MONGODB_URI
        #: elsewhere): its pid would name another process here, or none.
        self.pid: int | None = pid if _is_database(pid) else None
        #: Every sample taken, in order: drive's last two are its measurement's start and end.
        self.history: list[DatabaseSample] = []

    def sample(self) -> DatabaseSample:
        status = self._client.admin.command("serverStatus")
        cpu = process_cpu(self.pid) if self.pid is not None else 0.0
        batches = batch_totals(self._metrics_url) if self._metrics_url else {}
        taken = DatabaseSample(
            cpu, int(status["network"]["numRequests"]), time.perf_counter(), batches
        )
        self.history.append(taken)
        return taken

    def close(self) -> None:
        self._client.close()


async def drop_database(uri: str, name: str) -> None:
    """Drop a database of the bench's own. Only once the servers writing to it are gone: a
    drop beside an open transaction can stall the embedded store."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    try:
        await client.drop_database(name)
    finally:
        await client.close()


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
