"""Runs the client libraries' own tests (clients/typescript with node --test, clients/go with
go test) against a real chat-server process on the session's servers.

A language whose tool is missing is skipped with the reason; with CHAT_REQUIRE_CLIENT_TESTS=1
(.ci/run sets it) a missing tool fails instead, so CI cannot pass by skipping them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.tokens import mint_dev_token
from tests.support.chat_client import JWT_SETTINGS, SECRET
from tests.support.paths import REPO_ROOT

TYPESCRIPT = REPO_ROOT / "clients" / "typescript"
GO = REPO_ROOT / "clients" / "go"
#: Runs go on clients/go offline over Debian's packages (GOPATH mode; see the script).
OFFLINE_GO = GO / "offline-go"
#: A tenant whose quota allows one call, then one every 20 s: RESOURCE_EXHAUSTED on demand.
LIMITED_TENANT = "client-tests-limited"
TENANTS = (
    "tenants:\n"
    "  - id: acme\n"
    f"  - id: {LIMITED_TENANT}\n"
    "    quotas: {requests_per_second: 0.05, burst: 1}\n"
)
REQUIRED = os.environ.get("CHAT_REQUIRE_CLIENT_TESTS") == "1"
#: Where Debian's golang-*-dev packages put their sources.
DEBIAN_GOPATH = Path("/usr/share/gocode")


@dataclass(frozen=True, slots=True)
class Outcome:
    """A finished client test run."""

    returncode: int
    output: str
    seconds: float


def server_settings(tenants_file: Path) -> dict[str, str]:
    """The chat-server's settings for the client tests: a database of their own, so what they
    store is no other test's business."""
    return {
        **JWT_SETTINGS,
        "CHAT_TENANTS_FILE": str(tenants_file),
        "CHAT_MONGODB_DATABASE": f"client_tests_{uuid.uuid4().hex[:8]}",
    }


def client_env(target: str) -> dict[str, str]:
    """What the client tests read: where the server is and the tokens to call it with."""
    return {
        "CHAT_TEST_TARGET": target,
        "CHAT_TEST_TOKEN": mint_dev_token(secret=SECRET, tenant_id="acme", subject="client"),
        # Expired an hour ago: past any leeway the verifier allows.
        "CHAT_TEST_EXPIRED_TOKEN": mint_dev_token(
            secret=SECRET, tenant_id="acme", subject="client", lifetime_seconds=-3600
        ),
        "CHAT_TEST_LIMITED_TOKEN": mint_dev_token(
            secret=SECRET, tenant_id=LIMITED_TENANT, subject="client"
        ),
    }


def require_tool(name: str, what: str) -> str:
    """The tool's path; a skip (a failure under CHAT_REQUIRE_CLIENT_TESTS=1) without it."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found: the {what} tests did not run"
        if REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    return path


def require_path(path: Path, hint: str) -> None:
    """Like require_tool, for a file or directory (``hint``: what provides it)."""
    if not path.exists():
        shown = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
        message = f"{shown} is missing ({hint}): the client tests did not run"
        if REQUIRED:
            pytest.fail(message)
        pytest.skip(message)


async def run(
    argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], limit_seconds: float
) -> Outcome:
    """Run a client test command to the end (killed past ``limit_seconds``), output captured."""
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env={**os.environ, **env},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), limit_seconds)
    except TimeoutError:
        process.kill()
        output, _ = await process.communicate()
        return Outcome(-1, output.decode(errors="replace") + "\n(killed: timed out)", limit_seconds)
    return Outcome(
        process.returncode or 0, output.decode(errors="replace"), time.monotonic() - started
    )
