"""The loop shared by the reply queue and the delivery queue: claim leased items from
MongoDB while there are free slots, handle each in its own task, sleep until woken (or a
second passes) when there is nothing to do, and finish the items in hand when stopping.

The due items are found a batch at a time (the oldest first) and then claimed one by one by
id. Finding is the costly query (a range over every due item, which the store reads whole);
claiming by id is cheap, and a claim another process made first simply fails."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from abc import ABC, abstractmethod
from typing import Generic, Protocol, TypeVar

import structlog

log = structlog.get_logger("chat.queue")

_IDLE_SECONDS = 1.0
#: Due items found per query, as multiples of the concurrency.
_CANDIDATES_PER_SLOT = 4


class Leased(Protocol):
    """A claimed item: what the loop needs to know of it."""

    @property
    def id(self) -> str: ...


ItemT = TypeVar("ItemT", bound=Leased)


class LeasedQueueWorker(ABC, Generic[ItemT]):
    """Subclasses say how to claim one item and how to handle it."""

    def __init__(self, *, name: str, concurrency: int) -> None:
        self._name = name
        #: This process's lease owner id.
        self._owner = uuid.uuid4().hex
        self._slots = asyncio.Semaphore(concurrency)
        self._batch = concurrency * _CANDIDATES_PER_SLOT
        #: Ids found due and not yet tried, oldest first.
        self._candidates: list[str] = []
        self._wake = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        """Something was queued: look now rather than at the next poll."""
        self._wake.set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Work until ``stopping`` is set; items in hand are finished first."""
        while not stopping.is_set():
            # Cleared before looking, so a wake while looking is not lost.
            self._wake.clear()
            try:
                claimed = await self._claim_some(stopping)
            except Exception:
                log.exception("queue unavailable", queue=self._name)
                claimed = False
            if not claimed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), _IDLE_SECONDS)
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    @abstractmethod
    async def due(self, limit: int) -> list[str]:
        """The ids of up to ``limit`` due items, the oldest first."""

    @abstractmethod
    async def claim(self, item_id: str) -> ItemT | None:
        """Lease this item to this process if it is still due, or None."""

    async def _next(self) -> ItemT | None:
        """The next due item claimed, or None when none is due."""
        fetched = False
        while True:
            if not self._candidates:
                if fetched:
                    return None  # every candidate of a fresh batch was taken
                self._candidates = await self.due(self._batch)
                fetched = True
            while self._candidates:
                item = await self.claim(self._candidates.pop(0))
                if item is not None:
                    return item

    @abstractmethod
    async def handle(self, item: ItemT) -> None:
        """Work on one claimed item (its own failures are the subclass's to record)."""

    async def _claim_some(self, stopping: asyncio.Event) -> bool:
        """Claim and start items while any is due; each waits for a free slot, so a busy
        worker takes the next item the moment one is finished."""
        claimed = False
        while True:
            await self._slots.acquire()
            try:
                item = None if stopping.is_set() else await self._next()
            except BaseException:
                self._slots.release()
                raise
            if item is None:
                self._slots.release()
                return claimed
            claimed = True
            task = asyncio.create_task(self._guarded(item))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _guarded(self, item: ItemT) -> None:
        try:
            await self.handle(item)
        except Exception:
            # The lease lapses and the item is tried again; nothing was recorded.
            log.exception("queue item failed unexpectedly", queue=self._name, item=item.id)
        finally:
            self._slots.release()
