"""Child processes that die with their parent, and small port helpers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from server.workers import dying_with_parent


class ChildProcess:
    """One server process: started in its own session, stopped with SIGTERM then SIGKILL."""

    def __init__(
        self,
        *,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(os.environ if env is None else env)
        self.log_path = log_path
        self.cwd = cwd
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The process id while started."""
        return self._process.pid if self._process else None

    def start(self) -> None:
        """Start the process; its output goes to log_path, or to ours when there is none."""
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            dying_with_parent(self.argv),
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT if self._log else None,
            # Its own session: a Ctrl-C in the terminal reaches only the launcher, which then
            # stops the children in order (services before the servers they depend on).
            start_new_session=True,
        )

    def exit_code(self) -> int | None:
        """None while running (or never started), else the exit code."""
        return self._process.poll() if self._process else None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL. Returns the exit code."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return process.returncode

    def log_tail(self, lines: int = 40) -> str:
        """The end of the process's log, for error messages."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def free_port(preferred: int = 0, host: str = "127.0.0.1") -> int:
    """``preferred`` when it can be bound on ``host``, otherwise a free ephemeral port."""
    for candidate in ([preferred] if preferred else []) + [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # As servers bind: a port whose last connections linger in TIME_WAIT is free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, candidate))
            except OSError:
                continue
            port: int = sock.getsockname()[1]
            return port
    raise OSError("no free port")  # binding port 0 only fails when the host has none


def wait_until(
    ready: Callable[[], bool],
    *,
    child: ChildProcess,
    timeout: float,
    what: str,
) -> None:
    """Poll ``ready`` until it is true; fail early if ``child`` exits, or after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        code = child.exit_code()
        if code is not None:
            raise RuntimeError(
                f"{child.name} exited with code {code} before {what}\n{child.log_tail()}"
            )
        if ready():
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{child.name}: not {what} within {timeout:.0f}s\n{child.log_tail()}"
            )
        time.sleep(0.1)


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def script_path(name: str) -> str:
    """A console script of this environment (they live beside the running interpreter)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found: run `make install` (pip install -e '.[embedded]')")
    return found
