"""The TypeScript and Go clients against a real chat-server process (on the session's servers).

Each language's tests live with its client (clients/typescript/test, clients/go); this runs
them with the server's address and tokens in the environment and fails with their output.
"""

from __future__ import annotations

import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from devstack.stack import Endpoints
from tests.support.client_tests import (
    DEBIAN_GOPATH,
    GO,
    OFFLINE_GO,
    TENANTS,
    TYPESCRIPT,
    client_env,
    require_path,
    require_tool,
    run,
    server_settings,
)
from tests.support.server_process import chat_server_process


@pytest.fixture(scope="module")
async def client_env_for_tests(
    stack: Endpoints, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, str]]:
    tenants = tmp_path_factory.mktemp("client-tests") / "tenants.yaml"
    tenants.write_text(TENANTS)
    async with chat_server_process(stack, server_settings(tenants)) as (_process, target):
        yield client_env(target)


@pytest.mark.timeout(180)
async def test_the_typescript_client_against_the_server(
    client_env_for_tests: dict[str, str],
) -> None:
    node = require_tool("node", "TypeScript client")
    require_path(TYPESCRIPT / "dist" / "index.js", "`make install` builds it")
    outcome = await run(
        [
            node,
            "--test",
            "--test-reporter=tap",
            *sorted(str(p) for p in TYPESCRIPT.glob("test/*.test.mjs")),
        ],
        cwd=TYPESCRIPT,
        env=client_env_for_tests,
        limit_seconds=150,
    )
    sys.stdout.write(outcome.output)  # shown with -s or -rP: what each client test did
    assert outcome.returncode == 0, outcome.output
    # node --test passes when it finds no test at all: it must have run them.
    passed = re.search(r"^# pass (\d+)$", outcome.output, re.MULTILINE)
    assert passed is not None, outcome.output
    assert int(passed[1]) > 0, outcome.output


@pytest.mark.timeout(300)
async def test_the_go_client_against_the_server(
    client_env_for_tests: dict[str, str], tmp_path: Path
) -> None:
    require_tool("go", "Go client")
    require_path(
        DEBIAN_GOPATH / "src" / "google.golang.org" / "grpc",
        "apt-get install golang-google-grpc-dev",
    )
    env = {"CHAT_GO_WORKSPACE": str(tmp_path / "gopath")}
    vetted = await run([str(OFFLINE_GO), "vet", "./..."], cwd=GO, env=env, limit_seconds=120)
    assert vetted.returncode == 0, vetted.output
    outcome = await run(
        [str(OFFLINE_GO), "test", "-count=1", "-v", "./..."],
        cwd=GO,
        env={**client_env_for_tests, **env},
        limit_seconds=150,
    )
    sys.stdout.write(outcome.output)  # shown with -s or -rP: what each client test did
    assert outcome.returncode == 0, outcome.output
    assert "--- PASS: TestSendMessageAndStream" in outcome.output, outcome.output
    assert "--- PASS: TestErrorDetails" in outcome.output, outcome.output
