"""Running the real ``chatctl`` command as a user does: a child process with its own
environment, its exit code and both outputs; never blocking the event loop the test's
in-process server runs on."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHATCTL = str(Path(sys.executable).parent / "chatctl")


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def jsonl(self) -> list[Any]:
        return [json.loads(line) for line in self.stdout.splitlines()]


@dataclass
class Chatctl:
    """``chatctl`` with a fixed environment: the server's address, a data directory holding
    the dev secret, a config directory of its own (no profile of the machine's user)."""

    env: dict[str, str] = field(default_factory=dict)

    def environ(self, extra: dict[str, str] | None) -> dict[str, str]:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("CHAT_", "CHATCTL_"))}
        return {**inherited, "COLUMNS": "200", **self.env, **(extra or {})}

    async def __call__(
        self, *args: str, env: dict[str, str] | None = None, within: float = 60
    ) -> Result:
        process = await asyncio.create_subprocess_exec(
            CHATCTL,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.environ(env),
        )
        out, err = await asyncio.wait_for(process.communicate(), within)
        assert process.returncode is not None
        return Result(process.returncode, out.decode(), err.decode())

    async def with_terminal_stderr(
        self, *args: str, env: dict[str, str] | None = None, within: float = 60
    ) -> tuple[Result, str]:
        """Run with stderr on a pseudo-terminal (so progress bars are drawn) and stdout on a
        pipe, as in ``chatctl ... | jq``; returns the result and what the terminal showed."""
        controller, terminal = pty.openpty()
        shown = bytearray()
        loop = asyncio.get_running_loop()
        drained = asyncio.Event()

        def readable() -> None:
            try:
                chunk = os.read(controller, 65536)
            except OSError:
                chunk = b""
            if chunk:
                shown.extend(chunk)
            else:
                loop.remove_reader(controller)
                drained.set()

        loop.add_reader(controller, readable)
        try:
            process = await asyncio.create_subprocess_exec(
                CHATCTL,
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=terminal,
                env=self.environ({"TERM": "xterm", **(env or {})}),
            )
            os.close(terminal)
            out, _ = await asyncio.wait_for(process.communicate(), within)
            await asyncio.wait_for(drained.wait(), 10)
        finally:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(controller)
            os.close(controller)
        assert process.returncode is not None
        return Result(process.returncode, out.decode(), ""), shown.decode(errors="replace")

    @contextlib.asynccontextmanager
    async def running(
        self, *args: str, env: dict[str, str] | None = None
    ) -> AsyncIterator[asyncio.subprocess.Process]:
        """A long-running chatctl (``conversations tail``), stopped after the block."""
        process = await asyncio.create_subprocess_exec(
            CHATCTL,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.environ(env),
            # As from a terminal: a test run started in the background (nohup, `&`) ignores
            # SIGINT, and a child would inherit that and never see the Ctrl-C tests send it.
            preexec_fn=_default_sigint,
        )
        try:
            yield process
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
