"""``chat-server``: run the gRPC server until SIGTERM or SIGINT, then shut down gracefully."""

from __future__ import annotations

import asyncio
import gc
import os
import sys

import structlog

from server.clients import open_clients
from server.grpc_server import ChatServer
from server.log import configure_logging
from server.repositories.secrets import SecretKeyError
from server.repositories.tenants_file import TenantsFileError
from server.settings import Settings, SettingsError
from server.stopping import stop_on_signals
from server.tracing.setup import configure_tracing
from server.workers import WORKER_INDEX, supervise, worker_settings

#: Allocations between collections of the youngest generation (CPython's default is 700).
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """Once the server is up. What startup built lives until exit, so the cyclic collector
    stops walking it (gc.freeze); and it collects the youngest generation every 10,000
    allocations rather than 700. With a thousand open streams, the full collections
    otherwise paused the event loop for up to 50 ms at a time (see docs/performance.md)."""
    gc.collect()  # startup's garbage first, or freezing would keep it forever
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


async def serve(settings: Settings) -> None:
    """Serve until the process is asked to stop."""
    stop = asyncio.Event()
    stop_on_signals(stop, grace_seconds=settings.shutdown_grace_seconds)
    clients = await open_clients(settings)
    server: ChatServer | None = None
    try:
        server = ChatServer(settings=settings, clients=clients)
        await server.start()
    except BaseException:
        # stop() also closes the clients; without a server only they need closing.
        await (server.stop() if server is not None else clients.close())
        raise
    tune_gc()
    await stop.wait()
    await server.stop()


def main() -> None:
    """Entry point of ``chat-server``: one server, or with CHAT_WORKERS the supervisor of
    several (server/workers.py), each started as this module with its index."""
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        sys.exit(f"chat-server: {exc}")
    configure_logging(log_format=settings.log_format, level=settings.log_level)
    index = os.environ.get(WORKER_INDEX)
    if settings.workers > 1 and index is None:
        sys.exit(supervise(settings))
    if index is not None:
        settings = worker_settings(settings, int(index))
        structlog.contextvars.bind_contextvars(worker=int(index))
    try:
        # Before any client exists: the instrumentations patch the classes they are made from.
        configure_tracing(service_name="chat-server")
    except SettingsError as exc:
        sys.exit(f"chat-server: {exc}")
    try:
        asyncio.run(serve(settings))
    # RuntimeError: grpc could not bind the address.
    except (TenantsFileError, SecretKeyError, SettingsError, OSError, RuntimeError) as exc:
        structlog.get_logger("chat.server").error("cannot start", error=str(exc))
        sys.exit(1)


if __name__ == "__main__":
    main()
