"""The probes the deployment files use, against running processes: the `liveness` health name,
`python -m server.healthcheck` (the compose file's health check), the worker's probe path."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable

import aiohttp

from server.healthcheck import check
from server.metrics import serve_registry
from server.worker.main import WorkerMetrics
from tests.support.deploy_files import deployments
from tests.support.servers import RunningServer

StartServer = Callable[..., Awaitable[RunningServer]]


async def test_liveness_and_the_whole_server_are_serving(start_server: StartServer) -> None:
    server = await start_server()
    assert await check(server.target, "liveness", 2) == "SERVING"
    assert await check(server.target, "", 2) == "SERVING"
    assert await check(server.target, "no.such.Service", 2) == "UNREACHABLE (NOT_FOUND)"


async def test_the_healthcheck_command_exits_0_only_when_serving(
    start_server: StartServer,
) -> None:
    server = await start_server()

    async def run(*args: str) -> tuple[int, bytes]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "server.healthcheck", *args, stderr=asyncio.subprocess.PIPE
        )
        _, stderr = await process.communicate()
        assert process.returncode is not None
        return process.returncode, stderr

    code, said = await run(server.target)
    assert (code, said.strip()) == (0, f"{server.target} (server): SERVING".encode())
    code, said = await run("127.0.0.1:1", "--timeout", "0.5")
    assert code == 1
    assert b"UNREACHABLE" in said


async def test_the_worker_answers_its_liveness_probe_path() -> None:
    [container] = deployments()["chat-worker"]["spec"]["template"]["spec"]["containers"]
    probe = container["livenessProbe"]["httpGet"]["path"]
    runner = await serve_registry(WorkerMetrics().registry, "127.0.0.1:0")
    try:
        port = runner.addresses[0][1]
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}{probe}") as response,
        ):
            assert response.status == 200
    finally:
        await runner.cleanup()
