"""`make run` as a user meets it: chat-dev starts everything, and stops everything.

Each test runs the real `chat-dev` command on free ports under a temporary directory and
talks to it through real clients.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import jwt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pymongo import MongoClient

from chat.v1 import tenant_service_pb2, tenant_service_pb2_grpc
from server.workers import dying_with_parent
from tests.support.paths import EXAMPLE_TENANTS, REPO_ROOT

pytestmark = pytest.mark.e2e

CHAT_DEV = str(Path(sys.executable).parent / "chat-dev")
START_TIMEOUT = 120.0
URL_SETTINGS = ("CHAT_MONGODB_URI", "CHAT_REDIS_URL", "CHAT_KAFKA_BOOTSTRAP")


class DevRun:
    """One `chat-dev` process and what it wrote to run.json."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        run_file = data_dir / "run.json"
        run_file.unlink(missing_ok=True)
        # The embedded stack is the point here: URL settings of the test run must not leak in.
        env = {k: v for k, v in os.environ.items() if k not in URL_SETTINGS}
        # dying_with_parent: if this test process dies (a timeout, a kill), chat-dev is
        # told to stop too, and stops its servers; nothing outlives the test run.
        self.process = subprocess.Popen(
            dying_with_parent(
                [
                    CHAT_DEV,
                    "--data-dir",
                    str(data_dir),
                    "--tenants-file",
                    str(EXAMPLE_TENANTS),
                    "--log-dir",
                    str(data_dir / "logs"),
                    *("--grpc-port", "0", "--bridge-port", "0", "--metrics-port", "0"),
                    *("--mongodb-port", "0", "--redis-port", "0", "--kafka-port", "0"),
                    *("--sandbox-port", "0"),
                ]
            ),
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            self._wait_for(run_file)
        except BaseException:
            # Interrupted or failed while starting (a test timeout included): stop it all.
            self.stop(signal.SIGTERM)
            raise
        self.info = json.loads(run_file.read_text())
        self.children = _children(self.process.pid)

    def _wait_for(self, run_file: Path) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not run_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail("chat-dev did not start")
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGINT) -> tuple[int, str]:
        """Signal chat-dev and return its exit code and output."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        output, _ = self.process.communicate(timeout=60)
        return self.process.returncode, output


def _children(pid: int) -> dict[int, str]:
    """Direct children of ``pid``: pid -> command line."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found[int(entry.name)] = cmdline
    return found


def _alive(pids: dict[int, str], timeout: float = 20.0) -> dict[int, str]:
    deadline = time.monotonic() + timeout
    while True:
        alive = {}
        for pid, cmd in pids.items():
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                alive[pid] = cmd
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


@pytest.fixture
def dev_run(tmp_path: Path) -> Iterator[DevRun]:
    run = DevRun(tmp_path / "data")
    yield run
    run.stop()  # also closes the output pipe when the process already exited


def health(target: str, service: str = "") -> int:
    with grpc.insecure_channel(target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return int(reply.status)


def reflected_services(target: str) -> set[str]:
    with grpc.insecure_channel(target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=5)))
    return {service.name for service in reply.list_services_response.service}


def test_make_run_serves_and_stops_cleanly(dev_run: DevRun) -> None:
    info = dev_run.info
    for service in ("", "chat.v1.ChatService", "mongodb", "redis", "kafka"):
        assert health(info["grpc_target"], service) == health_pb2.HealthCheckResponse.SERVING
    assert reflected_services(info["grpc_target"]) >= {
        "chat.v1.ChatService",
        "chat.v1.SessionService",
        "chat.v1.IngestService",
        "chat.v1.AnalyticsService",
        "chat.v1.AuditService",
        "chat.v1.DeliveryService",
        "chat.v1.TenantService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    with urllib.request.urlopen(f"{info['bridge_url']}/healthz", timeout=5) as response:
        assert json.loads(response.read()) == {"status": "ok", "server": "SERVING"}
    # The web chat's demo page, embedding the widget for the dev tenant.
    assert info["web_chat_url"] == f"{info['bridge_url']}/web/v1/demo/acme"
    with urllib.request.urlopen(info["web_chat_url"], timeout=5) as response:
        assert b'data-site-key="dev-acme-site-key"' in response.read()
    with urllib.request.urlopen(f"{info['bridge_url']}/web/v1/widget.js", timeout=5) as response:
        assert response.headers["ETag"]

    secret = (dev_run.data_dir / "dev-jwt-secret").read_text().strip()
    claims = jwt.decode(
        info["dev_token"],
        secret,
        algorithms=["HS256"],
        audience="chat-service",
        issuer="chat-service-dev",
    )
    assert claims["tenant_id"] == "acme"
    assert set(claims["scope"].split()) == {"chat:read", "chat:write", "chat:admin"}

    # The printed token works against the running server; no token does not.
    with grpc.insecure_channel(info["grpc_target"]) as channel:
        stub = tenant_service_pb2_grpc.TenantServiceStub(channel)
        reply = stub.GetTenant(
            tenant_service_pb2.GetTenantRequest(),
            metadata=(("authorization", f"Bearer {info['dev_token']}"),),
            timeout=5,
        )
        assert reply.tenant.id == "acme"
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetTenant(tenant_service_pb2.GetTenantRequest(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]

    names = " ".join(dev_run.children.values())
    for program in (
        "secantusd-py",
        "valkey-server",
        "tansu",
        "chat-server",
        "chat-worker",
        "chat-sandbox",
    ):
        assert program in names
    conversation = chatctl_quick_start(dev_run)
    sandbox_round_trips(dev_run)
    code, output = dev_run.stop(signal.SIGINT)
    assert code == 0, output
    assert "chat-dev: stopped" in output
    assert "web chat (demo page)   http://" in output
    # The banner's line to paste, which the quick start's chatctl calls above used.
    assert f"export CHAT_ADDRESS={info['grpc_target']} CHAT_TOKEN={info['dev_token']}" in output
    assert conversation
    assert _alive(dev_run.children) == {}
    assert "stopped" in (dev_run.data_dir / "logs" / "chat-server.log").read_text()
    assert f"platform sandbox       {info['sandbox_url']}" in output
    # The replies went to the sandbox, not to the real platforms: no failed delivery, no
    # warning anywhere.
    for name in ("chat-server", "chat-worker", "chat-bridge", "chat-sandbox"):
        log = (dev_run.data_dir / "logs" / f"{name}.log").read_text()
        assert "[warning" not in log, log
        assert "[error" not in log, log


def sandbox_round_trips(dev_run: DevRun) -> None:
    """The sandbox page's send, as a user of each platform: the bot's menu arrives at the
    sandbox and the platform's receipts move its ticks (Slack has none: sent)."""
    info = dev_run.info
    assert info["sandbox_platforms"] == ["whatsapp", "messenger", "slack", "teams"]
    assert info["real_platforms"] == {}
    sandbox = info["sandbox_url"]
    for platform in info["sandbox_platforms"]:
        request = urllib.request.Request(
            f"{sandbox}sandbox/send",
            data=json.dumps({"platform": platform, "user": "ana", "text": "help"}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.loads(response.read()) == {"bridge_status": 200}
    final = {"whatsapp": "read", "messenger": "read", "slack": "sent", "teams": "read"}
    deadline = time.monotonic() + 30
    while True:
        with urllib.request.urlopen(f"{sandbox}sandbox/state", timeout=10) as response:
            chats = json.loads(response.read())["chats"]
        ticks = {
            key.split(":", 1)[0]: [e["status"] for e in entries if e["sender"] == "bot"]
            for key, entries in chats.items()
        }
        if all(ticks.get(platform) == [status] for platform, status in final.items()):
            return
        assert time.monotonic() < deadline, ticks
        time.sleep(0.2)


def chatctl_quick_start(dev_run: DevRun) -> str:
    """The README's quick start: `chatctl send`, then `chatctl conversations tail`, with the
    printed address and token; and `chatctl token mint` with make run's secret. Returns the
    conversation's id."""
    chatctl = str(Path(sys.executable).parent / "chatctl")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CHAT")},
        "CHAT_ADDRESS": dev_run.info["grpc_target"],
        "CHAT_TOKEN": dev_run.info["dev_token"],
    }

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [chatctl, *args],
            check=False,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done

    sent = json.loads(run("send", "--user", "u1", "hello").stdout)
    conversation = str(sent["conversation"]["id"])
    tail = run("conversations", "tail", conversation, "--from-start", "--count", "2", "-o", "jsonl")
    texts = [
        json.loads(line)["message"]["content"]["text"]["text"] for line in tail.stdout.splitlines()
    ]
    assert texts[0] == "hello"
    assert len(texts) == 2  # and the bot's reply
    minted = run("token", "mint", "--tenant", "acme", "--data-dir", str(dev_run.data_dir))
    tenant = run("tenants", "get", "-o", "json", CHAT_TOKEN=minted.stdout.strip())
    assert json.loads(tenant.stdout)["tenant"]["id"] == "acme"
    return conversation


def test_a_crashed_child_stops_everything(dev_run: DevRun) -> None:
    server_pid = next(pid for pid, cmd in dev_run.children.items() if "chat-server" in cmd)
    os.kill(server_pid, signal.SIGKILL)
    dev_run.process.wait(timeout=60)
    code, output = dev_run.stop()
    assert code == 1
    assert "chat-server exited with code -9; stopping everything" in output
    assert _alive(dev_run.children) == {}


def test_a_killed_launcher_leaves_no_orphans(dev_run: DevRun) -> None:
    dev_run.process.kill()  # SIGKILL: the launcher gets no chance to clean up
    dev_run.process.wait(timeout=10)
    assert _alive(dev_run.children) == {}


def test_data_survives_a_restart(tmp_path: Path) -> None:
    first = DevRun(tmp_path / "data")
    try:
        with MongoClient(first.info["mongodb_uri"]) as client:
            client["chat_e2e"]["kept"].insert_one({"_id": "k1", "text": "still here"})
    finally:
        assert first.stop()[0] == 0
    second = DevRun(tmp_path / "data")
    try:
        with MongoClient(second.info["mongodb_uri"]) as client:
            assert client["chat_e2e"]["kept"].find_one({"_id": "k1"}) == {
                "_id": "k1",
                "text": "still here",
            }
        # The signing secret is kept too, so a token printed by the first run still works.
        secret_file = tmp_path / "data" / "dev-jwt-secret"
        assert secret_file.stat().st_mode & 0o777 == 0o600
        claims = jwt.decode(
            first.info["dev_token"],
            secret_file.read_text().strip(),
            algorithms=["HS256"],
            audience="chat-service",
        )
        assert claims["tenant_id"] == "acme"
    finally:
        assert second.stop()[0] == 0
