"""A real `chat-server` process (not an in-process server) on the session's servers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Mapping

from devstack.processes import free_port, port_open, script_path
from devstack.stack import Endpoints


@contextlib.asynccontextmanager
async def chat_server_process(
    stack: Endpoints, settings: Mapping[str, str]
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """The process and its target (host:port), once it listens; stopped after (killed if it
    does not stop)."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        script_path("chat-server"),
        env={
            **os.environ,
            **stack.as_env(),
            **settings,
            "CHAT_GRPC_ADDRESS": f"127.0.0.1:{port}",
            "CHAT_METRICS_ADDRESS": "off",
            "CHAT_LOG_LEVEL": "warning",
        },
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not port_open("127.0.0.1", port):
            assert process.returncode is None, "the server process exited"
            assert time.monotonic() < deadline, "the server process did not start"
            await asyncio.sleep(0.2)
        yield process, f"127.0.0.1:{port}"
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await asyncio.wait_for(process.wait(), 10)
