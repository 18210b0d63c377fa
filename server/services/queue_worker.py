"""The loop shared by the reply queue and the delivery queue: claim leased items from
MongoDB while there are free slots, handle each in its own task, sleep until woken (or a
second passes) when there is nothing to do, and finish the items in hand when stopping.

The due items are found a batch at a time (the oldest first) and then claimed by id, as many
at once as there are free slots: one claim (an update of those ids, then one read of what it
took) for a batch rather than two round trips an item. Finding is the costly query (a range
over every due item, which the store reads whole); claiming by id is cheap, and an item
another process claimed first is simply not among those taken.

Items this process queues itself need neither: a caller ``reserve``s room before its
transaction, writes that many items already leased to this worker (``Reservation.leasing``),
and after the commit hands them over. They start in the free slots, or wait in memory for
the next ones (at most a few per slot: the room a reservation finds). While due items are
claimed too, the two take turns: after a claim has started some, as many slots freed go to
the items handed over, then the next to a claim, so neither the items queued due (retries,
another process's, those queued when there was no room) nor those handed over wait behind
the other. One that waited a sixth of its lease for a slot has its lease renewed first (if
it is still this process's: not lapsed and claimed meanwhile, by another process or by this
one), so every item starts with nearly its whole lease, as a claimed one does. A stopping
worker gives the items it was handed and has not started back to the queue, due at once.
Should the process die, the leases of the items handed over lapse and they are claimed as any
other."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import uuid
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

import structlog

from server.domain.clock import as_stored
from server.domain.queues import Due, Leasing

log = structlog.get_logger("chat.queue")

_IDLE_SECONDS = 1.0
#: How often a stopping worker looks whether the room reserved is handed over yet.
_SETTLING_SECONDS = 0.01
#: Due items found per query, as multiples of the concurrency.
_CANDIDATES_PER_SLOT = 4


class Leased(Protocol):
    """A claimed item: what the loop needs to know of it."""

    @property
    def id(self) -> str: ...


ItemT = TypeVar("ItemT", bound=Leased)


class LeasedQueueWorker(ABC, Generic[ItemT]):
    """Subclasses say how to claim one item and how to handle it."""

    def __init__(self, *, name: str, concurrency: int, lease: dt.timedelta) -> None:
        self._name = name
        #: This process's lease owner id.
        self._owner = uuid.uuid4().hex
        self._lease = lease
        #: Running: room is reserved for items handed over (none before the loop runs or
        #: once it ends).
        self._accepting = False
        #: Room reserved and not yet handed over or released.
        self._reserved = 0
        #: Items handed over waiting for a slot, with when their lease began (monotonic).
        self._handed: deque[tuple[float, ItemT]] = deque()
        self._handed_at_most = concurrency * _CANDIDATES_PER_SLOT
        #: The loop is claiming due items: a slot freed is its, unless it is owed to the
        #: items handed over (as many as the last claims started).
        self._claiming = False
        self._owed_to_handed = 0
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
        self._stopping: asyncio.Event | None = None

    def wake(self) -> None:
        """Something was queued: look now rather than at the next poll."""
        self._wake.set()

    def reserve(self, wanted: int) -> Reservation[ItemT]:
        """Room for up to ``wanted`` items this process is about to queue, written leased to
        this worker: its free slots and the room left to wait in memory (none while it is
        not running)."""
        room = 0
        if self._accepting and not (self._stopping and self._stopping.is_set()):
            room = self._free + self._handed_at_most - len(self._handed) - self._reserved
        slots = max(0, min(wanted, room))
        self._reserved += slots
        return Reservation(self, slots)

    @property
    def owner(self) -> str:
        """This process's lease owner id."""
        return self._owner

    @property
    def lease(self) -> dt.timedelta:
        """How long a claim leases an item for."""
        return self._lease

    def handed(self, items: Sequence[ItemT], *, leased_at: float) -> None:
        """Take items a reservation's room was kept for (see Reservation.hand_over), leased
        at ``leased_at`` (monotonic)."""
        self._reserved -= len(items)
        self._handed.extend((leased_at, item) for item in items)
        self._start_handed()

    def released(self, slots: int) -> None:
        """Give back room a reservation kept and did not use."""
        self._reserved -= slots

    def _start_handed(self) -> None:
        """Start items handed over in the free slots, taking turns with the loop while it
        claims due items (and none once the loop has ended: those are given back). One whose
        lease is a sixth gone is renewed first, in its own task."""
        while (
            self._handed
            and self._free > 0
            and self._accepting
            and (not self._claiming or self._owed_to_handed)
        ):
            leased_at, item = self._handed.popleft()
            self._take_slots(1)
            self._owed_to_handed = max(0, self._owed_to_handed - 1)
            waited = time.monotonic() - leased_at > self._lease.total_seconds() / 6
            self._start(item, renew=waited)

    async def renew(self, item: ItemT) -> ItemT | None:
        """The item with its lease renewed from now, if this process still holds the lease it
        was handed with (None: it lapsed and was claimed meanwhile, or the item is gone).
        Queues whose items are handed over say how; the others are never asked."""
        log.warning("a queue item handed over cannot be renewed", queue=self._name, item=item.id)
        return None

    async def give_back(self, items: list[ItemT]) -> None:
        """Give items handed over and not started back to the queue, due now (stopping).
        Queues whose items are handed over say how; the others leave them to their leases."""
        log.warning(
            "queue items handed over left to their leases", queue=self._name, count=len(items)
        )

    def _take_slots(self, count: int) -> None:
        self._free -= count
        if self._free <= 0:
            self._room.clear()

    def _give_slots(self, count: int) -> None:
        self._free += count
        if self._free > 0:
            self._room.set()

    def _start(self, item: ItemT, *, renew: bool = False) -> None:
        """Handle a claimed item in a task of its own (its slot is taken already); ``renew``
        its lease first."""
        task = asyncio.create_task(self._guarded(item, renew=renew))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def run(self, stopping: asyncio.Event) -> None:
        """Work until ``stopping`` is set (from then no room is reserved); items in hand are
        finished first, and those handed over and not started are given back."""
        self._accepting = True
        self._stopping = stopping
        try:
            await self._loop(stopping)
        finally:
            self._accepting = False
        while self._running or self._reserved or self._handed:
            if self._handed:
                waiting = [item for _, item in self._handed]
                self._handed.clear()
                try:
                    await self.give_back(waiting)
                except Exception:  # noqa: BLE001 - their leases lapse instead
                    log.warning("items handed over not given back", queue=self._name)
            elif self._running:
                await asyncio.gather(*self._running, return_exceptions=True)
            else:
                await asyncio.sleep(_SETTLING_SECONDS)

    async def _loop(self, stopping: asyncio.Event) -> None:
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
        a busy worker claims the next ones the moment a slot is free (its turn: see
        _start_handed). The free slots are taken while their claim is made, and those it did
        not fill are given back."""
        self._claiming = True
        try:
            return await self._claim_while_due(stopping)
        finally:
            self._claiming = False
            self._owed_to_handed = 0
            self._start_handed()

    async def _claim_while_due(self, stopping: asyncio.Event) -> bool:
        claimed = False
        while True:
            await self._room.wait()
            if stopping.is_set():
                return claimed
            limit = self._free
            if limit <= 0:
                self._room.clear()
                continue
            self._take_slots(limit)
            items: list[ItemT] = []
            try:
                items = await self._next(limit)
            finally:
                self._give_slots(limit - len(items))
                self._start_handed()  # the slots owed to them, if any
            if not items:
                return claimed
            claimed = True
            for item in items:
                self._start(item)
            if self._handed:
                self._owed_to_handed += len(items)

    async def _guarded(self, item: ItemT, *, renew: bool = False) -> None:
        try:
            if renew:
                renewed = await self.renew(item)
                if renewed is None:
                    log.info("queued item's lease lapsed while it waited", queue=self._name)
                    return
                item = renewed
            await self.handle(item)
        except Exception:
            # The lease lapses and the item is tried again; nothing was recorded.
            log.exception("queue item failed unexpectedly", queue=self._name, item=item.id)
        finally:
            self._give_slots(1)
            self._start_handed()


class Reservation(Generic[ItemT]):
    """Room in a worker kept for items its process is queuing: they are written leased to it
    (``leasing``) and handed over after their commit (no poll, no claim). The room not handed
    over is released; ``release`` (after a failed commit, say) gives back all that is still
    kept. Room is kept for as short a time as the transaction takes, so a reservation is
    ended one way or the other (a stopping worker waits for it)."""

    def __init__(self, worker: LeasedQueueWorker[ItemT] | None, slots: int) -> None:
        self._worker = worker
        self._slots = slots if worker is not None else 0
        #: When the items' lease began (monotonic): when ``leasing`` was last asked for.
        self._leased_at = time.monotonic()

    @classmethod
    def none(cls) -> Reservation[ItemT]:
        """No slot (no worker in this process takes items over): every item is queued due."""
        return cls(None, 0)

    @property
    def slots(self) -> int:
        """How many items may still be handed over (0: queue them due, as any other)."""
        return self._slots

    def leasing(self, now: dt.datetime) -> Leasing | None:
        """How to write the items leased from ``now``, the time of the write (None: queue
        them due, as any other). Asked for again (a transaction run again), the lease begins
        then."""
        if self._worker is None or self._slots == 0:
            return None
        self._leased_at = time.monotonic()
        until = as_stored(now + self._worker.lease)  # matched by a renewal's filter
        return Leasing(owner=self._worker.owner, until=until, slots=self._slots)

    def hand_over(self, items: Sequence[ItemT]) -> None:
        """Give the worker these items, committed leased to it (at most ``slots``); the room
        left is released."""
        if len(items) > self._slots:
            raise ValueError(f"{len(items)} items handed over for {self._slots} slots")
        if self._worker is not None:
            self._worker.handed(items, leased_at=self._leased_at)
        self._slots -= len(items)
        self.release()

    def release(self) -> None:
        """Give back the room not handed over."""
        if self._worker is not None:
            self._worker.released(self._slots)
        self._slots = 0
