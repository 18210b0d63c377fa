"""Starts the whole service on the embedded stack and watches it: what `make run` runs.

Order: MongoDB-wire, Redis and Kafka servers (unless URLs are given), then the chat server,
the worker and the bridge. If any process exits on its own, everything is stopped; on stop,
services go first and the servers they depend on last.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.processes import ChildProcess, free_port, script_path, wait_until
from devstack.sandbox.plan import SandboxPlan, plan
from devstack.stack import HOST, EmbeddedStack, Endpoints, StackPorts
from devstack.tokens import (
    DEV_AUDIENCE,
    DEV_ISSUER,
    DEV_SCOPES,
    dev_secret,
    dev_tenant_secrets_key,
    mint_dev_token,
)
from server.settings import DEFAULT_SHUTDOWN_GRACE_SECONDS
from server.stopping import EXIT_MARGIN_SECONDS

SERVICE_START_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class LaunchConfig:
    """What to start and where."""

    data_dir: Path
    tenants_file: Path
    dev_tenant: str = "acme"
    grpc_port: int = 8001
    bridge_port: int = 8080
    metrics_port: int = 9464
    #: The platform sandbox's page and APIs (devstack/sandbox); 0: any free port.
    sandbox_port: int = 8090
    stack_ports: StackPorts = field(default_factory=StackPorts)
    #: None: services log to this terminal; else one file per service in this directory.
    service_log_dir: Path | None = None


@dataclass(frozen=True, slots=True)
class RunningService:
    """Addresses of a started service, also written to <data_dir>/run.json."""

    grpc_target: str
    bridge_url: str
    mongodb_uri: str
    redis_url: str
    kafka_bootstrap: str
    tenants_file: str
    dev_tenant: str
    dev_token: str
    #: The bridge's demo page of the web chat widget, for the dev tenant.
    web_chat_url: str = ""
    #: The platform sandbox's page ("" when it plays no platform), the platforms it plays,
    #: and why each other platform is left real.
    sandbox_url: str = ""
    sandbox_platforms: tuple[str, ...] = ()
    real_platforms: dict[str, str] = field(default_factory=dict)


class Launcher:
    """Start everything, supervise, stop everything."""

    def __init__(self, *, config: LaunchConfig, environ: Mapping[str, str] | None = None) -> None:
        self._config = config
        self._environ = dict(os.environ if environ is None else environ)
        self._stack = EmbeddedStack(
            data_dir=config.data_dir, ports=config.stack_ports, environ=self._environ
        )
        self._services: list[ChildProcess] = []
        self.stopping = threading.Event()

    def start(self) -> RunningService:
        """Start every process and wait until each is ready; on failure stop what started."""
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> RunningService:
        config = self._config
        endpoints = self._stack.start()
        grpc_port = free_port(config.grpc_port)
        bridge_port = free_port(config.bridge_port)
        env = self._service_env(endpoints, grpc_port, bridge_port)
        bridge_url = f"http://{HOST}:{bridge_port}"
        sandbox = plan(env, config.tenants_file, config.dev_tenant)
        sandbox_url = self._start_sandbox(sandbox, env, bridge_url) if sandbox.platforms else ""
        grpc_target = f"{HOST}:{grpc_port}"
        server = self._spawn("chat-server", env)
        wait_until(
            # Ready: the service, and each server started here (Kafka is not needed for the
            # service to be SERVING, but an embedded stack reported ready should have it; an
            # external one given by URL is the user's to watch).
            lambda: _grpc_serving(grpc_target, ("", *self._stack.started)),
            child=server,
            timeout=SERVICE_START_TIMEOUT_SECONDS,
            what="reporting SERVING",
        )
        self._spawn("chat-worker", env)
        bridge = self._spawn("chat-bridge", env)
        wait_until(
            lambda: _http_ok(f"{bridge_url}/healthz"),
            child=bridge,
            timeout=SERVICE_START_TIMEOUT_SECONDS,
            what="answering /healthz",
        )
        running = RunningService(
            grpc_target=grpc_target,
            bridge_url=bridge_url,
            mongodb_uri=endpoints.mongodb_uri,
            redis_url=endpoints.redis_url,
            kafka_bootstrap=endpoints.kafka_bootstrap,
            tenants_file=str(config.tenants_file),
            dev_tenant=config.dev_tenant,
            dev_token=mint_dev_token(secret=env["CHAT_JWT_SECRET"], tenant_id=config.dev_tenant)
            if env.get("CHAT_JWT_SECRET") and env.get("CHAT_JWT_ISSUER") == DEV_ISSUER
            else "",
            web_chat_url=f"{bridge_url}/web/v1/demo/{env['CHAT_WEB_DEMO_TENANT']}",
            sandbox_url=f"{sandbox_url}/" if sandbox_url else "",
            sandbox_platforms=sandbox.platforms,
            real_platforms=sandbox.real,
        )
        (config.data_dir / "run.json").write_text(json.dumps(asdict(running), indent=2))
        return running

    def _service_env(
        self, endpoints: Endpoints, grpc_port: int, bridge_port: int
    ) -> dict[str, str]:
        env = dict(self._environ)
        env.update(endpoints.as_env())
        metrics = self._config.metrics_port
        worker_metrics = metrics + 1 if metrics else 0
        env.update(
            {
                "CHAT_GRPC_ADDRESS": f"{HOST}:{grpc_port}",
                "CHAT_METRICS_ADDRESS": f"{HOST}:{free_port(self._config.metrics_port)}",
                # The worker's own /metrics, on the next port (any free one with port 0).
                "CHAT_WORKER_METRICS_ADDRESS": f"{HOST}:{free_port(worker_metrics)}",
                "CHAT_BRIDGE_HOST": HOST,
                "CHAT_BRIDGE_PORT": str(bridge_port),
                "CHAT_SERVER_TARGET": f"{HOST}:{grpc_port}",
                "CHAT_TENANTS_FILE": str(self._config.tenants_file),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.setdefault("CHAT_LOG_FORMAT", "console")
        # The bridge serves a demo page of the web chat widget for the dev tenant.
        env.setdefault("CHAT_WEB_DEMO_TENANT", self._config.dev_tenant)
        if not env.get("CHAT_TENANT_SECRETS_KEY_FILE"):
            env["CHAT_TENANT_SECRETS_KEY_FILE"] = str(dev_tenant_secrets_key(self._config.data_dir))
        if not any(
            env.get(k) for k in ("CHAT_JWT_SECRET", "CHAT_JWT_JWKS_URL", "CHAT_JWT_PUBLIC_KEY_FILE")
        ):
            env.update(
                {
                    "CHAT_JWT_SECRET": dev_secret(self._config.data_dir),
                    "CHAT_JWT_ALGORITHMS": "HS256",
                    "CHAT_JWT_ISSUER": DEV_ISSUER,
                    "CHAT_JWT_AUDIENCE": DEV_AUDIENCE,
                }
            )
        return env

    def _start_sandbox(self, sandbox: SandboxPlan, env: dict[str, str], bridge_url: str) -> str:
        """Start chat-sandbox and point the service's platform settings at it (in ``env``)."""
        port = free_port(self._config.sandbox_port)
        url = f"http://{HOST}:{port}"
        child = self._spawn(
            "chat-sandbox",
            env,
            "--host",
            HOST,
            "--port",
            str(port),
            "--bridge-url",
            bridge_url,
            "--tenants-file",
            str(self._config.tenants_file),
            "--tenant",
            self._config.dev_tenant,
        )
        wait_until(
            lambda: _http_ok(f"{url}/healthz"),
            child=child,
            timeout=SERVICE_START_TIMEOUT_SECONDS,
            what="answering /healthz",
        )
        for key, value in sandbox.service_env(url).items():
            if not env.get(key):  # the plan left set platform settings alone; so is any other
                env[key] = value
        return url

    def _spawn(self, name: str, env: dict[str, str], *args: str) -> ChildProcess:
        log_dir = self._config.service_log_dir
        child = ChildProcess(
            name=name,
            argv=[script_path(name), *args],
            env=env,
            log_path=log_dir / f"{name}.log" if log_dir else None,
        )
        child.start()
        self._services.append(child)
        return child

    def crashed(self) -> list[tuple[str, int]]:
        """Processes that exited on their own, with their exit codes."""
        services = [(c.name, code) for c in self._services if (code := c.exit_code()) is not None]
        return services + self._stack.crashed()

    def supervise(self, poll_seconds: float = 0.5) -> list[tuple[str, int]]:
        """Block until ``stopping`` is set or a process exits; returns the exited ones."""
        while not self.stopping.wait(poll_seconds):
            crashed = self.crashed()
            if crashed:
                return crashed
        return []

    def stop(self) -> None:
        """Stop services, newest first, then the servers."""
        # Past each service's own exit deadline: the kill is the last resort, not a race.
        timeout = _shutdown_grace(self._environ) + EXIT_MARGIN_SECONDS + 5
        while self._services:
            self._services.pop().stop(timeout=timeout)
        self._stack.stop()


def _shutdown_grace(environ: Mapping[str, str]) -> float:
    """The services' CHAT_SHUTDOWN_GRACE_SECONDS (a value they would refuse counts as the
    default: they did not start)."""
    try:
        return float(environ.get("CHAT_SHUTDOWN_GRACE_SECONDS", DEFAULT_SHUTDOWN_GRACE_SECONDS))
    except ValueError:
        return float(DEFAULT_SHUTDOWN_GRACE_SECONDS)


def _grpc_serving(target: str, services: Sequence[str]) -> bool:
    """Whether the server's health reports SERVING for each of ``services`` ("" is the whole
    service; mongodb, redis and kafka each dependency)."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in services:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
            except grpc.RpcError:
                return False
            if reply.status != health_pb2.HealthCheckResponse.SERVING:
                return False
    return True


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - our own http URL
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


__all__ = ["DEV_SCOPES", "LaunchConfig", "Launcher", "RunningService"]
