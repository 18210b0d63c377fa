"""SIGTERM and SIGINT: stop gracefully, and exit by a deadline whatever still waits.

Asked to stop, chat-server and chat-worker drain what they hold: calls within
CHAT_SHUTDOWN_GRACE_SECONDS, then background loops, consumers and clients. With a dependency
gone (the broker or the database stopped first, or stopped with them when their launcher was
killed), that draining waits on network timeouts, some of them longer than any supervisor
allows; and a process started by a parent that died has nobody left to kill it. So the first
signal also arms a deadline, the grace period plus ``EXIT_MARGIN_SECONDS``, after which the
process logs it and exits at once with code 1.

Exiting there loses nothing: events not yet published wait in the outbox for the next relay,
Kafka records whose offsets were not committed are delivered again and handled once (each
handler records the event ids it applied), and unclaimed jobs wait in MongoDB.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from types import FrameType

import structlog

log = structlog.get_logger("chat.stopping")

#: How long after the grace period a stopping process may still take before it is cut short.
EXIT_MARGIN_SECONDS = 5.0


def stop_on_signals(stop: asyncio.Event, *, grace_seconds: float) -> None:
    """SIGTERM and SIGINT set ``stop``; the first also arms the exit deadline. Call from the
    running loop, in the main thread, before anything that may wait on a dependency."""
    loop = asyncio.get_running_loop()
    deadline = grace_seconds + EXIT_MARGIN_SECONDS
    armed = threading.Event()

    def requested(_signum: int, _frame: FrameType | None) -> None:
        # A plain signal handler rather than the loop's: Python runs it in the main thread
        # even while the loop is blocked (a synchronous call), so the deadline is armed then
        # too; stop is set through the loop, which wakes for it.
        if armed.is_set():
            return
        armed.set()
        with contextlib.suppress(RuntimeError):  # the loop already closed: exiting anyway
            loop.call_soon_threadsafe(stop.set)
        # The deadline runs in a thread of its own, so it holds when the loop is stuck. It is
        # never cancelled: it also covers asyncio.run's own cleanup (the default executor's
        # threads can wait on a dependency too), and as a daemon thread it does not hold up
        # an exit that comes in time.
        timer = threading.Timer(deadline, _exit_late, args=(deadline,))
        timer.daemon = True
        timer.start()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, requested)


def _exit_late(deadline: float) -> None:
    try:
        log.error("stopping took too long; exiting now", deadline_seconds=deadline)
        sys.stdout.flush()
        sys.stderr.flush()
    finally:  # a closed pipe (the parent gone) must not keep the process alive
        os._exit(1)


async def finish_task(task: asyncio.Task[None], seconds: float = 20.0) -> None:
    """Let a background loop end at its next safe point; cancel it only if it hangs."""
    try:
        await asyncio.wait_for(asyncio.shield(task), seconds)
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
