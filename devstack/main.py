"""``chat-dev``: run the whole service on the embedded stack (this is what `make run` runs)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from devstack.launcher import DEV_SCOPES, LaunchConfig, Launcher, RunningService
from devstack.stack import StackPorts


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; each default can also come from a CHAT_DEV_* variable."""
    parser = argparse.ArgumentParser(prog="chat-dev", description=__doc__)
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("CHAT_DEV_DATA_DIR", ".data"))
    )
    parser.add_argument(
        "--tenants-file",
        type=Path,
        default=Path(os.environ.get("CHAT_TENANTS_FILE", "config/tenants.example.yaml")),
    )
    parser.add_argument(
        "--tenant",
        default=os.environ.get("CHAT_DEV_TENANT", "acme"),
        help="tenant of the printed token",
    )
    parser.add_argument("--grpc-port", type=int, default=_env_int("CHAT_DEV_GRPC_PORT", 8001))
    parser.add_argument("--bridge-port", type=int, default=_env_int("CHAT_DEV_BRIDGE_PORT", 8080))
    parser.add_argument("--metrics-port", type=int, default=_env_int("CHAT_DEV_METRICS_PORT", 9464))
    parser.add_argument("--sandbox-port", type=int, default=_env_int("CHAT_DEV_SANDBOX_PORT", 8090))
    parser.add_argument(
        "--mongodb-port", type=int, default=_env_int("CHAT_DEV_MONGODB_PORT", 27027)
    )
    parser.add_argument("--redis-port", type=int, default=_env_int("CHAT_DEV_REDIS_PORT", 6390))
    parser.add_argument("--kafka-port", type=int, default=_env_int("CHAT_DEV_KAFKA_PORT", 9092))
    parser.add_argument(
        "--log-dir", type=Path, default=None, help="write service logs here instead of the terminal"
    )
    return parser.parse_args(argv)


def banner(running: RunningService, data_dir: Path) -> str:
    """What a new user needs to start talking to the service."""
    token = running.dev_token or "(none: CHAT_JWT_* points at your own keys)"
    # One line to paste: where chatctl is, the server, the token.
    exports = f"  export CHAT_ADDRESS={running.grpc_target}"
    if running.dev_token:
        exports += f" CHAT_TOKEN={running.dev_token}"
    exports += f' PATH="{Path(sys.executable).parent}:$PATH"'
    return f"""
chat-service is running. Ctrl-C stops everything.

  chat server (gRPC)     {running.grpc_target}
  webhook bridge (HTTP)  {running.bridge_url}
  web chat (demo page)   {running.web_chat_url}
{_sandbox_lines(running)}
  MongoDB wire server    {running.mongodb_uri}
  Redis                  {running.redis_url}
  Kafka                  {running.kafka_bootstrap}
  tenants file           {running.tenants_file}
  data and server logs   {data_dir}/ (logs/ holds the servers' output)

Development token (tenant {running.dev_tenant}, scopes {" ".join(DEV_SCOPES)}, valid 24 hours):

  {token}

Try, in another terminal (chatctl: docs/chatctl.md):
{exports}
  chatctl send --user u1 "hello"
  chatctl conversations tail <conversation id from the reply> --from-start
  grpcurl -plaintext {running.grpc_target} list
  curl {running.bridge_url}/healthz
""".rstrip()


def _sandbox_lines(running: RunningService) -> str:
    """Where the platform sandbox is, what it plays, and which platforms are real and why."""
    lines = []
    if running.sandbox_url:
        played = ", ".join(running.sandbox_platforms)
        lines.append(f"  platform sandbox       {running.sandbox_url} (chat as a user of {played})")
    for platform, reason in running.real_platforms.items():
        lines.append(f"  {platform:<22} the real API ({reason})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``chat-dev``."""
    args = parse_args(argv)
    data_dir: Path = args.data_dir.resolve()
    launcher = Launcher(
        config=LaunchConfig(
            data_dir=data_dir,
            tenants_file=args.tenants_file.resolve(),
            dev_tenant=args.tenant,
            grpc_port=args.grpc_port,
            bridge_port=args.bridge_port,
            metrics_port=args.metrics_port,
            sandbox_port=args.sandbox_port,
            stack_ports=StackPorts(
                mongodb=args.mongodb_port, redis=args.redis_port, kafka=args.kafka_port
            ),
            service_log_dir=args.log_dir.resolve() if args.log_dir else None,
        )
    )

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        launcher.stopping.set()

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # While starting, a signal interrupts the start-up itself (which then stops what it
    # started); once running, it asks the supervision loop to stop.
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    print(f"chat-dev: starting the embedded stack under {data_dir}/ ...", flush=True)
    try:
        running = launcher.start()
    except KeyboardInterrupt:
        sys.exit("chat-dev: interrupted while starting; stopped what had started")
    except Exception as exc:  # noqa: BLE001 - any start-up failure gets one clear line
        sys.exit(f"chat-dev: could not start: {exc}")
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    print(banner(running, data_dir), flush=True)
    crashed = launcher.supervise()
    for name, code in crashed:
        print(
            f"chat-dev: {name} exited with code {code}; stopping everything",
            file=sys.stderr,
            flush=True,
        )
    print("chat-dev: stopping ...", flush=True)
    launcher.stop()
    print("chat-dev: stopped", flush=True)
    sys.exit(1 if crashed else 0)
