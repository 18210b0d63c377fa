"""The web widget's browser tests: Debian's chromium driven by Playwright (never a browser
Playwright downloads), and the bridge as its own process, so a test can stop and restart it.

Without chromium or Playwright the tests are skipped with the reason; with
CHAT_REQUIRE_BROWSER_TESTS=1 (.ci/run sets it) that is a failure instead, so CI cannot pass by
skipping them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.support.paths import REPO_ROOT

REQUIRED = os.environ.get("CHAT_REQUIRE_BROWSER_TESTS") == "1"
CHROMIUM_FLAGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
WIDGET = REPO_ROOT / "clients" / "web-widget" / "dist" / "widget.js"
#: Screenshots for a person to look at.
OUTPUT = REPO_ROOT / "build" / "test-output"


def missing(message: str) -> None:
    """Skip (fail under CHAT_REQUIRE_BROWSER_TESTS=1) with ``message``."""
    message += ": the browser tests did not run"
    if REQUIRED:
        pytest.fail(message)
    pytest.skip(message)


def chromium() -> str:
    """Debian's chromium, or a skip."""
    path = os.environ.get("CHAT_CHROMIUM") or shutil.which("chromium") or ""
    if not path or not Path(path).exists():
        missing("chromium not found (apt-get install chromium)")
    if not WIDGET.exists():
        missing(f"{WIDGET.relative_to(REPO_ROOT)} is not built (make install)")
    try:
        import playwright.async_api  # noqa: F401, PLC0415 - only to say it is there
    except ImportError:
        missing("playwright (Python) is not installed (make install)")
    return path


class BridgeProcess:
    """``chat-bridge`` on a fixed port, stopped and started again by the test."""

    def __init__(self, *, env: Mapping[str, str], port: int, log: Path) -> None:
        self.env = {**os.environ, **env, "CHAT_BRIDGE_PORT": str(port)}
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it and wait until it answers."""
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [str(Path(sys.executable).parent / "chat-bridge")],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/web/v1/widget.js", timeout=2):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"chat-bridge did not start:\n{self.log.read_text()[-3000:]}")
                time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM, as a deploy does; wait for it to exit."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
