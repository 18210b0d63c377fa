"""The bridge's HTTP server against clients that misbehave below the webhooks: requests that
are not HTTP, clients gone mid-body, clients trickling their head or body. Each is answered
(or cut off) within a bound, with a fixed reason that echoes nothing back, and logged quietly:
never at error level, never with a traceback."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from devstack.processes import free_port
from tests.support.bot_framework import TeamsKeys
from tests.support.bridge import start_bridge
from webhook_bridge.http_server import FAULT_LINES_PER_MINUTE, LINGER_SECONDS

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
Logs = list[dict[str, Any]]


@pytest.fixture
async def bridge(tmp_path: Path, teams_keys: TeamsKeys) -> AsyncIterator[tuple[str, int]]:
    """A bridge with short time limits (no chat server behind it: nothing gets that far)."""
    runner, url = await start_bridge(
        f"127.0.0.1:{free_port()}",
        tmp_path,
        teams_keys.metadata_url,
        header_timeout=HEADER_TIMEOUT,
        body_timeout=BODY_TIMEOUT,
        access_log=logging.getLogger("aiohttp.access"),
    )
    yield "127.0.0.1", int(url.rsplit(":", 1)[1])
    await runner.cleanup()


@pytest.fixture
def quiet(caplog: pytest.LogCaptureFixture) -> Iterator[Logs]:
    """The structlog lines logged meanwhile; afterwards, that nothing was logged at error
    level or with a traceback (aiohttp's loggers included, down to debug)."""
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    with capture_logs() as logs:
        yield logs
    # At teardown caplog.records holds the teardown's records: the test's are the call's.
    loud = [
        r
        for r in [*caplog.get_records("call"), *caplog.records]
        if r.levelno >= logging.ERROR or r.exc_info
    ]
    assert not loud, [(r.name, r.getMessage()) for r in loud]
    noisy = [e for e in logs if e["log_level"] in ("error", "critical") or "exc_info" in e]
    assert not noisy, noisy


async def exchange(
    address: tuple[str, int], *parts: bytes, pause: float = 0.0, wait: float = 10.0
) -> bytes:
    """Send ``parts`` (``pause`` seconds apart) and read until the bridge closes."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        for index, part in enumerate(parts):
            if index and pause:
                await asyncio.sleep(pause)
            writer.write(part)
            await writer.drain()
        return await asyncio.wait_for(reader.read(), wait)
    finally:
        writer.close()


def answer_of(raw: bytes) -> tuple[int, bytes]:
    status_line, _, rest = raw.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


HEAD = (
    b"POST /webhooks/whatsapp/acme HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\n"
)
CHUNKED = HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
MALFORMED = [
    b"GET /\x00<script>alert(1)</script> HTTP/1.1\r\nHost: bridge\r\n\r\n",
    HEAD + b"Content-Length: 12<script>\r\n\r\n",
    HEAD + b"X-Token: s3cr3t\x01<script>\r\nContent-Length: 0\r\n\r\n",
    HEAD + b"X-Long: " + b"<script>" * 2000 + b"\r\n\r\n",
    HEAD + b"X-Many: <script>\r\n" * 200 + b"\r\n",
    CHUNKED + b"<script>\r\nabc\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03<script>",  # TLS to the HTTP port
]


async def test_malformed_requests_get_a_fixed_400_that_echoes_nothing(
    bridge: tuple[str, int], quiet: Logs
) -> None:
    for request in MALFORMED:
        status, body = answer_of(await exchange(bridge, request))
        assert status == 400, request
        assert json.loads(body) == {"error": "malformed HTTP request"}, request
    # A bad chunk after the head: the body is never complete, whether the bridge reads it
    # (the time limit answers) or drains it after answering (unknown tenant).
    for path, expected in (
        (b"/webhooks/whatsapp/acme", 408),
        (b"/webhooks/whatsapp/nobody", 404),
        (b"/nowhere", 404),
    ):
        head = CHUNKED.replace(b"/webhooks/whatsapp/acme", path)
        status, body = answer_of(await exchange(bridge, head, b"zz<script>\r\nabc\r\n", pause=0.2))
        assert status == expected, (path, body)
        assert b"<script>" not in body
    # A body that is not its Content-Encoding, drained after an answer given without it.
    for path in (b"/webhooks/whatsapp/nobody", b"/nowhere"):
        head = HEAD.replace(b"/webhooks/whatsapp/acme", path) + b"Content-Encoding: gzip\r\n"
        garbage = b"<script>" * 100
        status, body = answer_of(
            await exchange(bridge, head + b"Content-Length: 800\r\n\r\n", garbage, pause=0.2)
        )
        assert status == 404, body
    lines = [e for e in quiet if e["event"] == "malformed HTTP request"]
    assert lines
    assert all(e["log_level"] == "info" and "<script>" not in str(e) for e in lines)


async def test_clients_gone_mid_body_are_quiet(bridge: tuple[str, int], quiet: Logs) -> None:
    for path in (b"/webhooks/whatsapp/acme", b"/webhooks/whatsapp/nobody", b"/webhooks/teams/acme"):
        head = HEAD.replace(b"/webhooks/whatsapp/acme", path)
        _, writer = await asyncio.open_connection(*bridge)
        writer.write(head + b'Content-Length: 1000\r\n\r\n{"object":')
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.transport.abort()  # a reset, not a polite close
        _, writer = await asyncio.open_connection(*bridge)
        writer.write(CHUNKED.replace(b"/webhooks/whatsapp/acme", path) + b"5\r\nab")
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.close()
    await asyncio.sleep(0.5)  # the bridge notices


async def test_quiet_lines_are_bounded(
    bridge: tuple[str, int], quiet: Logs, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(3 * FAULT_LINES_PER_MINUTE):
        await exchange(bridge, MALFORMED[0])
    lines = [e for e in quiet if e["event"] == "malformed HTTP request"]
    assert len(lines) == FAULT_LINES_PER_MINUTE
    # Nor one access line each (aiohttp's "UNKNOWN / HTTP/1.0" 400); requests that parse keep
    # theirs.
    await exchange(bridge, b"GET /healthz HTTP/1.1\r\nHost: bridge\r\nConnection: close\r\n\r\n")
    access = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert len(access) == 1, access
    assert "GET /healthz" in access[0]


async def test_trickling_clients_are_cut_off(bridge: tuple[str, int], quiet: Logs) -> None:
    async def trickle(head: bytes, body: bytes) -> tuple[float, bytes | None]:
        """Send ``head`` at once, then ``body`` a byte every 0.2 s, until the bridge closes;
        the answer, or None when the connection was reset."""
        started = time.monotonic()
        reader, writer = await asyncio.open_connection(*bridge)
        writer.write(head)
        await writer.drain()
        answer = asyncio.ensure_future(reader.read())
        try:
            for byte in body:
                done, _ = await asyncio.wait({answer}, timeout=0.2)
                if done:
                    break
                writer.write(bytes([byte]))
            try:
                return time.monotonic() - started, await asyncio.wait_for(answer, 10)
            except ConnectionResetError:
                return time.monotonic() - started, None
        finally:
            writer.close()

    # The head a byte at a time: closed without an answer when the head's time is up.
    slow_head = HEAD + b"X-Padding: " + b"x" * 200 + b"\r\n\r\n"
    elapsed, answer = await trickle(b"", slow_head)
    assert HEADER_TIMEOUT <= elapsed < HEADER_TIMEOUT + 1.5, elapsed
    assert answer == b""
    # The body a byte at a time: 408 when the body's time is up (what still arrives is
    # drained a moment, so the client reads its answer rather than a reset).
    elapsed, answer = await trickle(HEAD + b"Content-Length: 200\r\n\r\n", b"x" * 200)
    assert BODY_TIMEOUT <= elapsed < BODY_TIMEOUT + LINGER_SECONDS + 1.5, elapsed
    assert answer is not None, "reset: the 408 was not read"
    status, body = answer_of(answer)
    assert status == 408
    assert json.loads(body)["error"]
    # Many at once: every one is cut off within the bound, without an answer. (A byte the
    # client sends as the bridge closes may make the kernel reset the connection: under load
    # some are cut off that way, which is no answer either.)
    started = time.monotonic()
    results = await asyncio.gather(*(trickle(b"", slow_head) for _ in range(200)))
    assert all(answer in (b"", None) for _, answer in results)
    assert time.monotonic() - started < HEADER_TIMEOUT + 3
