"""SIGTERM's deadline: a process whose stop waits on something gone still exits."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from tests.support.paths import REPO_ROOT

# A process that stops the way chat-server and chat-worker do, then finishes its stop as told:
# at once, waiting on the loop forever (a dependency that never answers), with the loop
# blocked once stopping, or with the loop blocked before the signal came.
CHILD = """
import asyncio, sys, time
import server.stopping
from server.log import configure_logging
from server.stopping import stop_on_signals

configure_logging(log_format="json", level="INFO")
server.stopping.EXIT_MARGIN_SECONDS = 0.5

async def main() -> None:
    stop = asyncio.Event()
    stop_on_signals(stop, grace_seconds=0.25)
    print("ready", flush=True)
    if sys.argv[1] == "stuck":
        time.sleep(3600)  # the loop is blocked before the signal comes, and never runs again
    await stop.wait()
    if sys.argv[1] == "waits":
        await asyncio.sleep(3600)
    elif sys.argv[1] == "blocks":
        time.sleep(3600)
    print("stopped", flush=True)

asyncio.run(main())
"""
DEADLINE = 0.25 + 0.5


def stopped(how: str, sig: int = signal.SIGTERM) -> tuple[int, str, float]:
    """Start the child, signal it once ready; its exit code, output and seconds to exit."""
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD, how],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        signalled = time.monotonic()
        process.send_signal(sig)
        output, _ = process.communicate(timeout=60)
        return process.returncode, output, time.monotonic() - signalled
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_stop_that_finishes_exits_cleanly() -> None:
    code, output, _ = stopped("finishes")
    assert code == 0
    assert "stopped" in output
    assert "took too long" not in output


@pytest.mark.parametrize("how", ["waits", "blocks", "stuck"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_that_hangs_is_cut_at_the_deadline(how: str, sig: int) -> None:
    code, output, seconds = stopped(how, sig)
    assert code == 1
    assert "stopping took too long; exiting now" in output
    assert '"deadline_seconds": 0.75' in output
    assert "stopped" not in output.splitlines()
    assert seconds >= DEADLINE  # never before the grace period and the margin are over
