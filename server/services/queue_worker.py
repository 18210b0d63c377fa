"""The loop shared by the reply queue and the delivery queue: claim leased items from
MongoDB while there are free slots, handle each in its own task, sleep until woken (or a
second passes) when there is nothing to do, and finish the items in hand when stopping.

The due items are found a batch at a time (the oldest first) and then claimed by id, as many
at once as there are free slots: one claim (an update of those ids, then one read of what it
took) for a batch rather than two round trips an item. Finding is the costly query (a range
over every due item, which the store reads whole); claiming by id is cheap, and an item
another process claimed first is simply not among those taken."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from abc import ABC, abstractmethod
from typing import Generic, Protocol, TypeVar

import structlog

from server.domain.queues import Due

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
        #: Free slots: items are claimed only for these, so none waits leased and idle.
        self._free = concurrency
        self._room = asyncio.Event()
        self._room.set()
        self._batch = concurrency * _CANDIDATES_PER_SLOT
        #: Items found due and not yet tried, oldest first.
        self._candidates: list[Due] = []
        #: The last look found fewer due items than it asked for: none other was due then,
        #: so the worker looks again only when woken or after its idle wait.
        self._exhausted = False
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
            self._exhausted = False
            try:
                claimed = await self._claim_some(stopping)
            except Exception:
                log.exception("queue unavailable", queue=self._name)
                claimed = False
            if not claimed or self._exhausted:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), _IDLE_SECONDS)
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    @abstractmethod
    async def due(self, limit: int) -> list[Due]:
        """Up to ``limit`` due items, the oldest first."""

    @abstractmethod
    async def claim_many(self, items: list[Due]) -> list[ItemT]:
        """Lease to this process those of ``items`` still due (in one claim), in their order."""

    async def _next(self, limit: int) -> list[ItemT]:
        """Up to ``limit`` due items claimed, the oldest first; none when none is due."""
        fetched = False
        while True:
            if not self._candidates:
                if fetched or self._exhausted:
                    # Every candidate of a fresh batch was taken, or nothing else was due
                    # when last looked (a slot freed since is no reason to look again).
                    return []
                self._candidates = await self.due(self._batch)
                self._exhausted = len(self._candidates) < self._batch
                fetched = True
            while self._candidates:
                trying = self._candidates[:limit]
                del self._candidates[:limit]
                claimed = await self.claim_many(trying)
                if claimed:
                    return claimed

    @abstractmethod
    async def handle(self, item: ItemT) -> None:
        """Work on one claimed item (its own failures are the subclass's to record)."""

    async def _claim_some(self, stopping: asyncio.Event) -> bool:
        """Claim and start items while any is due, as many at once as there are free slots;
        a busy worker claims the next ones the moment a slot is free."""
        claimed = False
        while True:
            await self._room.wait()
            if stopping.is_set():
                return claimed
            items = await self._next(self._free)
            if not items:
                return claimed
            claimed = True
            for item in items:
                self._free -= 1
                task = asyncio.create_task(self._guarded(item))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
            if self._free <= 0:
                self._room.clear()

    async def _guarded(self, item: ItemT) -> None:
        try:
            await self.handle(item)
        except Exception:
            # The lease lapses and the item is tried again; nothing was recorded.
            log.exception("queue item failed unexpectedly", queue=self._name, item=item.id)
        finally:
            self._free += 1
            self._room.set()
