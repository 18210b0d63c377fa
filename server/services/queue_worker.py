"""The loop shared by the reply queue and the delivery queue: claim leased items from
MongoDB while there are free slots, handle each in its own task, sleep until woken (or a
second passes) when there is nothing to do, and finish the items in hand when stopping."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from abc import ABC, abstractmethod
from typing import Any

import structlog

log = structlog.get_logger("chat.queue")

_IDLE_SECONDS = 1.0
_BUSY_PAUSE_SECONDS = 0.05


class LeasedQueueWorker(ABC):
    """Subclasses say how to claim one item and how to handle it."""

    def __init__(self, *, name: str, concurrency: int) -> None:
        self._name = name
        #: This process's lease owner id.
        self._owner = uuid.uuid4().hex
        self._slots = asyncio.Semaphore(concurrency)
        self._wake = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        """Something was queued: look now rather than at the next poll."""
        self._wake.set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Work until ``stopping`` is set; items in hand are finished first."""
        while not stopping.is_set():
            try:
                claimed = await self._claim_some()
            except Exception:
                log.exception("queue unavailable", queue=self._name)
                claimed = False
            if not claimed:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), _IDLE_SECONDS)
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    @abstractmethod
    async def claim(self) -> dict[str, Any] | None:
        """Lease the next due item to this process, or None."""

    @abstractmethod
    async def handle(self, item: dict[str, Any]) -> None:
        """Work on one claimed item (its own failures are the subclass's to record)."""

    async def _claim_some(self) -> bool:
        claimed = False
        while not self._slots.locked():
            item = await self.claim()
            if item is None:
                break
            claimed = True
            await self._slots.acquire()
            task = asyncio.create_task(self._guarded(item))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        if self._slots.locked():
            await asyncio.sleep(_BUSY_PAUSE_SECONDS)  # every slot busy: let them work
            return True
        return claimed

    async def _guarded(self, item: dict[str, Any]) -> None:
        try:
            await self.handle(item)
        except Exception:
            # The lease lapses and the item is tried again; nothing was recorded.
            log.exception("queue item failed unexpectedly", queue=self._name, item=item["_id"])
        finally:
            self._slots.release()
