"""CHAT_WORKERS: several server processes sharing the gRPC port (SO_REUSEPORT), so the service
uses every core rather than one event loop's.

The process started as ``chat-server`` then serves nothing itself: it starts the workers,
passes SIGTERM and SIGINT on to them, and when one exits on its own it stops the others and
exits 1, so a supervisor above (systemd, Kubernetes) sees the failure. Each worker is a whole
server, with its own connections; the queues and the outbox relay are already shared between
processes through their leases in MongoDB. Metrics are per worker: worker N serves them on the
configured port plus N. The workers die with the supervisor, even when it is killed.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

import structlog

from server.settings import Settings
from server.stopping import EXIT_MARGIN_SECONDS

log = structlog.get_logger("chat.workers")

#: Set in a worker's environment: its index, from 0.
WORKER_INDEX = "CHAT_WORKER_INDEX"
_POLL_SECONDS = 0.2

# Runs as the worker's first program: asks the kernel for SIGTERM when the supervisor dies,
# then becomes the worker. An exec wrapper rather than preexec_fn, which is unsafe once the
# parent has threads.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys; "
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM); "  # 1 = PR_SET_PDEATHSIG
    "os.execvp(sys.argv[1], sys.argv[1:])"
)


def dying_with_parent(argv: Sequence[str]) -> list[str]:
    """``argv`` wrapped so that the kernel sends it SIGTERM when the caller dies."""
    return [sys.executable, "-c", _DIE_WITH_PARENT, *argv]


def worker_settings(settings: Settings, index: int) -> Settings:
    """A worker's settings: metrics on the configured port plus its index (a port of 0 stays
    0, any free one)."""
    address = settings.metrics_address
    if address is None:
        return settings
    host, _, port = address.rpartition(":")
    if int(port) == 0:
        return settings
    return dataclasses.replace(settings, metrics_address=f"{host}:{int(port) + index}")


def supervise(settings: Settings) -> int:
    """Run ``settings.workers`` workers until SIGTERM or SIGINT (0), or until one exits on
    its own (1)."""
    stopping = False
    workers: list[subprocess.Popen[bytes]] = []

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for index in range(settings.workers):
        workers.append(
            subprocess.Popen(  # noqa: S603 - our own interpreter and module
                dying_with_parent([sys.executable, "-m", "server.main"]),
                env={**os.environ, WORKER_INDEX: str(index)},
            )
        )
    if stopping:  # asked to stop while they were starting: the later ones missed it
        stop(signal.SIGTERM, None)
    log.info("workers started", workers=settings.workers, pids=[w.pid for w in workers])
    failed = False
    while any(worker.poll() is None for worker in workers):
        exited = [w for w in workers if w.returncode is not None]
        if exited and not stopping:
            failed = True
            log.error(
                "a worker exited; stopping the others",
                pid=exited[0].pid,
                code=exited[0].returncode,
            )
            stop(signal.SIGTERM, None)
        time.sleep(_POLL_SECONDS)
        if stopping:
            # Past each worker's own exit deadline: the kill is the last resort, not a race.
            _kill_stragglers(workers, settings.shutdown_grace_seconds + EXIT_MARGIN_SECONDS + 5)
    # A worker stopped before it could handle SIGTERM itself ended by the signal: still a stop.
    clean = (0, -signal.SIGTERM)
    failed = failed or any(worker.returncode not in clean for worker in workers)
    return 1 if failed else 0


def _kill_stragglers(workers: list[subprocess.Popen[bytes]], within: float) -> None:
    """Wait for the stopping workers; kill what is still running after ``within``."""
    deadline = time.monotonic() + within
    for worker in workers:
        try:
            worker.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("a worker did not stop in time; killed", pid=worker.pid)
            worker.kill()
            worker.wait()
