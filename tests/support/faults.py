"""Faults for the fault suite (tests/faults): a stack of its own whose servers can be paused
and resumed, chat-server and chat-bridge processes that can be killed, a proxy that can hold
the answers, and SendMessage load that retries like a careful client and keeps the count."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from pymongo.asynchronous.database import AsyncDatabase

from chat.v1 import chat_service_pb2 as chat
from chat.v1 import common_pb2
from devstack.processes import ChildProcess, free_port, port_open, script_path
from devstack.stack import EmbeddedStack, Endpoints
from server.events.topics import TOPIC_BY_PAYLOAD
from tests.support.chat_client import ChatClient
from tests.support.kafka_events import published

#: The request's metadata key that names it in the stored message: how the count is kept.
FAULT_KEY = "fault_request"
REPORT_FILE = Path(__file__).resolve().parents[2] / "build" / "faults.json"


class FaultStack:
    """MongoDB-wire, Redis and Kafka servers of one fault case only: never the session's,
    which the other tests share."""

    def __init__(self, data_dir: Path) -> None:
        self._stack = EmbeddedStack(data_dir=data_dir, environ={}, kafka_partitions=1)
        self.endpoints: Endpoints | None = None

    def start(self) -> Endpoints:
        self.endpoints = self._stack.start()
        return self.endpoints

    def stop(self) -> None:
        for child in self._stack.children:
            self._signal(child, signal.SIGCONT)  # a stopped server cannot take SIGTERM
        self._stack.stop()

    @contextlib.contextmanager
    def paused(self, name: str) -> Iterator[None]:
        """``name`` (mongodb, redis, kafka) stopped with SIGSTOP, resumed on leaving."""
        child = self._child(name)
        self._signal(child, signal.SIGSTOP)
        try:
            yield
        finally:
            self._signal(child, signal.SIGCONT)

    def _child(self, name: str) -> ChildProcess:
        return next(c for c in self._stack.children if c.name == name)

    @staticmethod
    def _signal(child: ChildProcess, signum: signal.Signals) -> None:
        if child.pid is not None and child.exit_code() is None:
            os.kill(child.pid, signum)


class Process:
    """A chat-server or chat-bridge process, its output in a log file, killed at will."""

    def __init__(self, script: str, log_path: Path) -> None:
        self.script = script
        self.port = free_port()
        self.log_path = log_path
        self._child: ChildProcess | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, env: Mapping[str, str]) -> None:
        """Start it with ``env`` (self.port is where it must listen); return once it does."""
        self._child = ChildProcess(
            name=self.script, argv=[script_path(self.script)], env=env, log_path=self.log_path
        )
        self._child.start()
        deadline = time.monotonic() + 60
        while not port_open("127.0.0.1", self.port):
            assert self._child.exit_code() is None, f"exited: see {self.log_path}"
            assert time.monotonic() < deadline, f"did not start: see {self.log_path}"
            await asyncio.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no answer to what is in flight."""
        assert self._child is not None
        assert self._child.pid is not None
        os.kill(self._child.pid, signal.SIGKILL)

    def terminate(self) -> None:
        """SIGTERM: a deploy's stop, with time to finish what is in flight."""
        assert self._child is not None
        assert self._child.pid is not None
        os.kill(self._child.pid, signal.SIGTERM)

    async def wait(self, within: float) -> int | None:
        """Its exit code once it exits (None if it has not within ``within`` seconds)."""
        assert self._child is not None
        deadline = time.monotonic() + within
        for _ in range(int(within * 10) + 1):  # polled: a child process has no event to await
            code = self._child.exit_code()
            if code is not None or time.monotonic() >= deadline:
                return code
            await asyncio.sleep(0.1)
        return self._child.exit_code()

    def stop(self) -> None:
        if self._child is not None:
            self._child.stop()


def server_env(endpoints: Endpoints, settings: Mapping[str, str], port: int) -> dict[str, str]:
    return {
        **os.environ,
        **endpoints.as_env(),
        "CHAT_HEALTH_CHECK_INTERVAL_SECONDS": "5",  # the default: recovery must not need less
        "CHAT_METRICS_ADDRESS": "off",
        "CHAT_LOG_LEVEL": "info",
        "CHAT_LOG_FORMAT": "json",
        "CHAT_SHUTDOWN_GRACE_SECONDS": "2",
        **settings,
        "CHAT_GRPC_ADDRESS": f"127.0.0.1:{port}",
    }


async def chat_server(
    endpoints: Endpoints, settings: Mapping[str, str], log_dir: Path, name: str
) -> Process:
    """A started chat-server process of its own on ``endpoints``."""
    process = Process("chat-server", log_dir / f"{name}.log")
    await process.start(server_env(endpoints, settings, process.port))
    return process


class HoldingProxy:
    """A TCP proxy whose answers (the upstream's bytes) can be held back: the upstream has done
    the work, the caller has not heard of it."""

    def __init__(self, target_port: int) -> None:
        self.listen_port = free_port()
        self.target_port = target_port
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.listen_port}"

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", self.listen_port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(
            self._pipe(reader, up_writer, held=False), self._pipe(up_reader, writer, held=True)
        )

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, held: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if held:
                    await self._open.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.transport.abort()


def retry_delay(exc: grpc.aio.AioRpcError) -> float | None:
    """The RetryInfo delay the error carries, if any."""
    with contextlib.suppress(Exception):
        status = rpc_status.from_call(exc)
        for detail in status.details if status else ():
            if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                return info.retry_delay.ToNanoseconds() / 1e9
    return None


@dataclass
class Tally:
    """What the load saw."""

    #: request_id -> the id of the message the acknowledgement returned.
    acknowledged: dict[str, str] = field(default_factory=dict)
    #: request_ids sent at least once and never acknowledged.
    unacknowledged: set[str] = field(default_factory=set)
    #: request_ids that needed more than one try.
    retried: set[str] = field(default_factory=set)
    errors: Counter[str] = field(default_factory=Counter)
    #: Every error with its RetryInfo delay, or None when it had none.
    retry_info: Counter[str] = field(default_factory=Counter)
    #: (user, started, ended) of each acknowledged call.
    acks: list[tuple[int, float, float]] = field(default_factory=list)
    #: The longest any single call took, in seconds.
    longest_call: float = 0.0


class SendLoad:
    """SendMessage in a loop from several users at once. A failed call is tried again with the
    same request_id (after its RetryInfo delay, or 0.1 s), on the next target when there are
    several, until it is acknowledged, as a client that must not lose or double a message."""

    def __init__(
        self,
        targets: Sequence[ChatClient],
        *,
        users: int = 6,
        call_timeout: float = 3.0,
        give_up_after: float = 30.0,
    ) -> None:
        self._targets = list(targets)
        self._users = users
        self._timeout = call_timeout
        self._give_up_after = give_up_after
        self.users = users
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.tally = Tally()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._user(n), name=f"load-{n}") for n in range(self._users)
        ]

    async def recovered(self, moment: float, *, within: float) -> float | None:
        """Wait (at most ``within`` seconds) until every user had a call started after
        ``moment`` acknowledged; the seconds that took, or None."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if (seconds := recovery_after(self.tally, moment, self._users)) is not None:
                return seconds
            await asyncio.sleep(0.1)
        return None

    async def stop(self) -> Tally:
        """Stop sending new messages; the ones in flight are retried to the end first."""
        self._stopping.set()
        await asyncio.gather(*self._tasks)
        return self.tally

    async def _user(self, n: int) -> None:
        user_id = f"fault-user-{n}-{uuid.uuid4().hex[:6]}"
        target = 0  # the first target until it fails
        while not self._stopping.is_set():
            request_id = uuid.uuid4().hex
            request = chat.SendMessageRequest(
                request_id=request_id,
                user_id=user_id,
                channel=common_pb2.CHANNEL_TYPE_WEB,
                content=common_pb2.Content(text=common_pb2.TextContent(text=f"m {request_id}")),
                metadata={FAULT_KEY: request_id},
            )
            first_try = time.monotonic()
            tries = 0
            while True:
                tries += 1
                client = self._targets[target]
                started = time.monotonic()
                try:
                    response = await client.stub.SendMessage(
                        request, metadata=client.metadata, timeout=self._timeout
                    )
                except grpc.aio.AioRpcError as exc:
                    self.tally.longest_call = max(
                        self.tally.longest_call, time.monotonic() - started
                    )
                    self.tally.errors[exc.code().name] += 1
                    delay = retry_delay(exc)
                    self.tally.retry_info[
                        f"{exc.code().name} {'with' if delay is not None else 'without'} RetryInfo"
                    ] += 1
                    if time.monotonic() - first_try > self._give_up_after:
                        self.tally.unacknowledged.add(request_id)
                        break
                    target = (target + 1) % len(self._targets)
                    await asyncio.sleep(delay if delay is not None else 0.1)
                    continue
                ended = time.monotonic()
                self.tally.longest_call = max(self.tally.longest_call, ended - started)
                self.tally.acknowledged[request_id] = response.message.id
                self.tally.acks.append((n, started, ended))
                if tries > 1:
                    self.tally.retried.add(request_id)
                break


async def stored_requests(database: AsyncDatabase[dict[str, Any]]) -> dict[str, list[str]]:
    """request_id -> the ids of the inbound messages stored for it (one, if all is well)."""
    found: dict[str, list[str]] = {}
    cursor = database["messages"].find(
        {"direction": common_pb2.MESSAGE_DIRECTION_INBOUND}, {"pb": 1}
    )
    async for document in cursor:
        message = common_pb2.Message.FromString(document["pb"])
        key = message.metadata.get(FAULT_KEY)
        if key:
            found.setdefault(key, []).append(message.id)
    return found


@dataclass
class ReceivedEvents:
    """The MessageReceived records on the broker: message id -> its event ids."""

    by_message: dict[str, set[str]]
    by_platform_id: dict[str, set[str]]
    records: int

    @property
    def repeated(self) -> int:
        """Records beyond one per event id (a repeat consumers drop by event id)."""
        return self.records - sum(len(ids) for ids in self.by_message.values())


async def received_events(
    bootstrap: str, database: AsyncDatabase[dict[str, Any]], *, at_least: int, within: float = 30
) -> ReceivedEvents:
    """Every MessageReceived of the case's conversations (all of the database's) on the topic."""
    conversations = {
        document["conversation_id"] async for document in database["messages"].find({})
    }
    records = await published(
        bootstrap,
        TOPIC_BY_PAYLOAD["message_received"],
        conversations,
        at_least=at_least,
        within=within,
    )
    by_message: dict[str, set[str]] = defaultdict(set)
    by_platform_id: dict[str, set[str]] = defaultdict(set)
    for envelope in records:
        message = envelope.message_received.message
        by_message[message.id].add(envelope.event_id)
        if message.platform_message_id:
            by_platform_id[message.platform_message_id].add(envelope.event_id)
    return ReceivedEvents(dict(by_message), dict(by_platform_id), len(records))


class HealthWatch:
    """The server's overall health, polled every 50 ms, with the time of each change."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = health_pb2_grpc.HealthStub(channel)
        self.changes: list[tuple[float, int]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._poll(), name="health-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def serving_again_after(self, moment: float) -> float | None:
        """Seconds from ``moment`` to the first SERVING after it (0 if it never stopped)."""
        if not any(status != health_pb2.HealthCheckResponse.SERVING for _, status in self.changes):
            return 0.0
        for when, status in self.changes:
            if when >= moment and status == health_pb2.HealthCheckResponse.SERVING:
                return when - moment
        return None

    @property
    def went_down(self) -> bool:
        return any(s != health_pb2.HealthCheckResponse.SERVING for _, s in self.changes)

    async def _poll(self) -> None:
        last: int | None = None
        while True:
            try:
                reply = await self._stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                status = int(reply.status)
            except grpc.aio.AioRpcError:
                status = -1  # no answer at all: not SERVING either
            if status != last:
                self.changes.append((time.monotonic(), status))
                last = status
            await asyncio.sleep(0.05)


class OutboxWatch:
    """The outbox backlog (events waiting for the broker), sampled every 100 ms."""

    def __init__(self, database: AsyncDatabase[dict[str, Any]]) -> None:
        self._database = database
        self.samples: list[tuple[float, int]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._poll(), name="outbox-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def peak(self) -> int:
        return max((n for _, n in self.samples), default=0)

    def drained_after(self, moment: float, *, before: float) -> float | None:
        """Seconds from ``moment`` until the backlog was back to its level before ``before``
        (the largest seen then): the events held meanwhile had reached the broker."""
        usual = max((n for when, n in self.samples if when < before), default=0)
        for when, count in self.samples:
            if when >= moment and count <= usual:
                return when - moment
        return None

    async def _poll(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # a stalled MongoDB: no sample this time
                count = await asyncio.wait_for(self._database["outbox"].count_documents({}), 0.5)
                self.samples.append((time.monotonic(), count))
            await asyncio.sleep(0.1)


@dataclass
class FaultReport:
    """One fault case's figures."""

    case: str
    acknowledged: int
    lost: int
    duplicated: int
    retried: int
    unacknowledged: int
    errors: dict[str, int]
    retry_info: dict[str, int]
    longest_call_seconds: float
    recovery_seconds: float | None = None
    health_serving_after_seconds: float | None = None
    health_went_down: bool | None = None
    outbox_peak: int | None = None
    events_caught_up_seconds: float | None = None
    events_lost: int | None = None
    events_duplicated: int | None = None
    event_records_repeated: int | None = None
    notes: str = ""

    def line(self) -> str:
        """The figures on one line, for the run's summary."""
        parts = [
            f"{self.case:<22} acked {self.acknowledged} lost {self.lost} dup {self.duplicated}"
            f" retried {self.retried} unacked {self.unacknowledged}"
        ]
        if self.events_lost is not None:
            parts.append(
                f"events lost {self.events_lost} dup {self.events_duplicated}"
                f" (records repeated {self.event_records_repeated})"
            )
        errors = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items())) or "none"
        with_info = sum(v for k, v in self.retry_info.items() if " with " in k)
        parts.append(f"errors: {errors} ({with_info} with RetryInfo)")
        parts.append(f"longest call {self.longest_call_seconds:.2f}s")
        if self.recovery_seconds is not None:
            parts.append(f"recovered in {self.recovery_seconds:.2f}s")
        if self.outbox_peak is not None:
            caught_up = self.events_caught_up_seconds
            parts.append(
                f"outbox peak {self.outbox_peak} documents, back to usual "
                + ("never" if caught_up is None else f"{caught_up:.2f}s after")
            )
        if self.health_went_down is False:
            parts.append("health stayed SERVING")
        elif self.health_went_down:
            after = self.health_serving_after_seconds
            parts.append("health SERVING " + ("never" if after is None else f"{after:.2f}s after"))
        if self.notes:
            parts.append(self.notes)
        return "; ".join(parts)


REPORTS: list[FaultReport] = []


def record(report: FaultReport) -> None:
    """Keep the report for the run's summary, and in build/faults.json."""
    REPORTS.append(report)
    REPORT_FILE.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(REPORT_FILE.read_text()) if REPORT_FILE.exists() else {}
    previous[report.case] = asdict(report)
    REPORT_FILE.write_text(json.dumps(previous, indent=2, sort_keys=True) + "\n")


def recovery_after(tally: Tally, moment: float, users: int) -> float | None:
    """Seconds from ``moment`` until every user had a call started after it acknowledged."""
    firsts: dict[int, float] = {}
    for user, start, end in tally.acks:
        if start >= moment:
            firsts[user] = min(end, firsts.get(user, end))
    return max(firsts.values()) - moment if len(firsts) == users else None
