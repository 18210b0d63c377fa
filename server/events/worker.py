"""``chat-worker``: the event consumer process.

Skeleton: it checks that Kafka answers and that the chat topics exist, then waits for SIGTERM.
It deliberately joins no consumer group yet: a group that committed offsets without handlers
would make the events invisible to the handlers that come later.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

import structlog

from server.events.publisher import KafkaEventPublisher
from server.events.topics import ALL_TOPICS
from server.log import configure_logging
from server.settings import Settings, SettingsError

log = structlog.get_logger("chat.worker")


async def run(settings: Settings) -> None:
    """Report Kafka's state until asked to stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    publisher = KafkaEventPublisher(
        bootstrap_servers=settings.kafka_bootstrap, client_id="chat-worker"
    )
    log.info("worker started", topics=list(ALL_TOPICS), handlers=[])
    up: bool | None = None
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(publisher.probe(), 5)
                now_up = True
            except Exception:  # noqa: BLE001 - any failure means Kafka is not reachable
                now_up = False
            if now_up != up:
                (log.info if now_up else log.warning)(
                    "kafka " + ("reachable" if now_up else "unreachable"),
                    bootstrap=settings.kafka_bootstrap,
                )
                up = now_up
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.health_check_interval_seconds)
    finally:
        await publisher.close()
        log.info("worker stopped")


def main() -> None:
    """Entry point of ``chat-worker``."""
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        sys.exit(f"chat-worker: {exc}")
    configure_logging(log_format=settings.log_format, level=settings.log_level)
    asyncio.run(run(settings))
