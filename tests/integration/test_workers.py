"""CHAT_WORKERS: real chat-server processes sharing one port. Calls reach every worker, each
worker serves its own metrics, a stop stops them all, and a worker that dies takes the rest
down with a failing exit code."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest

from devstack.processes import free_port, port_open, script_path
from devstack.stack import Endpoints
from tests.support.chat_client import JWT_SETTINGS, TENANTS, ChatClient
from tests.support.servers import tenants_file

WORKERS = 2


class Workers:
    """A chat-server supervisor with its workers, on one gRPC port."""

    def __init__(self, process: asyncio.subprocess.Process, port: int, metrics: int) -> None:
        self.process = process
        self.target = f"127.0.0.1:{port}"
        self.metrics_ports = [metrics + index for index in range(WORKERS)]

    def pids(self) -> list[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in children.read_text().split()]


def metrics_base() -> int:
    """A port free together with the next ones (worker N serves metrics on base + N). Below
    the kernel's ephemeral range (32768 and up), where outgoing connections take ports any
    moment and a port free when looked at could be taken before a worker binds it."""
    for _ in range(200):
        base = random.randrange(20000, 32000 - WORKERS)  # noqa: S311 - a port, not a secret
        if all(bindable(base + n) for n in range(WORKERS)):
            return base
    raise AssertionError("no free run of metrics ports")


def bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def listening(port: int) -> int:
    """Sockets listening on ``port`` on this machine: one per worker that has bound it (grpc
    binds 127.0.0.1 as an IPv6 socket with a v4-mapped address, so both tables count)."""
    state_listen = "0A"
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, _, state = line.split()[1:4]
            if int(local.rpartition(":")[2], 16) == port and state == state_listen:
                count += 1
    return count


@pytest.fixture
async def workers(stack: Endpoints, tmp_path: Path) -> AsyncIterator[Workers]:
    port, metrics = free_port(), metrics_base()
    process = await asyncio.create_subprocess_exec(
        script_path("chat-server"),
        env={
            **os.environ,
            **stack.as_env(),
            **JWT_SETTINGS,
            "CHAT_TENANTS_FILE": tenants_file(tmp_path, TENANTS),
            "CHAT_MONGODB_DATABASE": f"workers_{uuid.uuid4().hex[:8]}",
            "CHAT_WORKERS": str(WORKERS),
            "CHAT_GRPC_ADDRESS": f"127.0.0.1:{port}",
            "CHAT_METRICS_ADDRESS": f"127.0.0.1:{metrics}",
            "CHAT_LOG_LEVEL": "warning",
        },
    )
    running = Workers(process, port, metrics)
    try:
        deadline = time.monotonic() + 60
        # Each worker serves its metrics before it binds the gRPC port: wait for both.
        while not (
            all(port_open("127.0.0.1", p) for p in running.metrics_ports)
            and listening(port) >= WORKERS
        ):
            assert process.returncode is None, "chat-server exited"
            assert time.monotonic() < deadline, "the workers did not start"
            await asyncio.sleep(0.2)
        yield running
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def served(http: aiohttp.ClientSession, port: int) -> float:
    """SendMessage calls this worker committed (its group-commit metric)."""
    async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    name = 'chat_group_commit_batch_size_sum{call="send_message"}'
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name)))


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped has stopped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


async def gone(pids: list[int], within: float = 20) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(alive(pid) for pid in pids):
            return True
        await asyncio.sleep(0.1)
    return False


async def test_calls_reach_every_worker_and_a_stop_stops_them_all(workers: Workers) -> None:
    pids = workers.pids()
    assert len(pids) == WORKERS
    calls = 24
    for n in range(calls):
        # A connection each: the kernel spreads connections over the sharing processes.
        async with grpc.aio.insecure_channel(workers.target) as channel:
            reply = await ChatClient(channel, "acme").send(f"call {n}", user_id=f"u{n}")
            assert reply.replies
    async with aiohttp.ClientSession() as http:
        counts = [await served(http, port) for port in workers.metrics_ports]
    assert sum(counts) == calls
    assert all(count > 0 for count in counts)  # every worker served some (2**-23 to fail)

    workers.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(workers.process.wait(), 30) == 0
    assert await gone(pids)


async def test_a_worker_that_dies_stops_the_others_and_fails(workers: Workers) -> None:
    first, *others = workers.pids()
    os.kill(first, signal.SIGKILL)
    assert await asyncio.wait_for(workers.process.wait(), 30) == 1
    assert await gone(others)


async def test_a_killed_supervisor_takes_its_workers_along(workers: Workers) -> None:
    pids = workers.pids()
    workers.process.kill()
    await workers.process.wait()
    assert await gone(pids)
