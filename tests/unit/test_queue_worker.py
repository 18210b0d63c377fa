"""LeasedQueueWorker: due items are found a batch at a time, claimed by id as many at once as
there are free slots, each handled once across competing workers, oldest first."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from server.domain.queues import Due
from server.services.queue_worker import LeasedQueueWorker

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)


class Store:
    """Due items by id, in due order; a claim takes an item once."""

    def __init__(self, ids: list[str]) -> None:
        self.waiting = list(ids)
        self.due_queries = 0
        #: The ids each claim asked for.
        self.claims: list[list[str]] = []
        self.empty = asyncio.Event()

    async def due(self, limit: int) -> list[Due]:
        self.due_queries += 1
        return [Due(tenant_id="tenant", id=item_id) for item_id in self.waiting[:limit]]

    async def claim_many(self, items: list[Due]) -> list[dict[str, Any]]:
        self.claims.append([item.id for item in items])
        await asyncio.sleep(0)  # another worker may claim meanwhile
        taken = [item.id for item in items if item.id in self.waiting]
        for item_id in taken:
            self.waiting.remove(item_id)
        if not self.waiting:
            self.empty.set()
        return [{"_id": item_id} for item_id in taken]


class Worker(LeasedQueueWorker):
    def __init__(self, store: Store, handled: list[str], concurrency: int = 2) -> None:
        super().__init__(name="test", concurrency=concurrency, lease=dt.timedelta(seconds=60))
        self.store = store
        self.handled = handled

    async def due(self, limit: int) -> list[Due]:
        return await self.store.due(limit)

    async def claim_many(self, items: list[Due]) -> list[dict[str, Any]]:
        return await self.store.claim_many(items)

    async def handle(self, item: dict[str, Any]) -> None:
        await asyncio.sleep(0.001)
        self.handled.append(item["_id"])

    renewable = True
    renewed: list[str]
    given_back: list[str]

    async def renew(self, item: dict[str, Any]) -> dict[str, Any] | None:
        self.__dict__.setdefault("renewed", []).append(item["_id"])
        return {**item, "renewed": True} if self.renewable else None

    async def give_back(self, items: list[dict[str, Any]]) -> None:
        self.__dict__.setdefault("given_back", []).extend(item["_id"] for item in items)


async def run_until_empty(*workers: Worker, store: Store) -> None:
    stopping = asyncio.Event()
    tasks = [asyncio.create_task(w.run(stopping)) for w in workers]
    await asyncio.wait_for(store.empty.wait(), 10)
    stopping.set()
    for worker in workers:
        worker.wake()
    await asyncio.gather(*tasks)


async def test_one_query_finds_several_items_and_each_is_handled_once_in_order() -> None:
    store = Store([f"item-{n:03d}" for n in range(40)])
    handled: list[str] = []
    await run_until_empty(Worker(store, handled, concurrency=1), store=store)
    assert handled == [f"item-{n:03d}" for n in range(40)]
    # 4 candidates per slot: 10 queries for 40 items, and one that found nothing more.
    assert store.due_queries <= 11


async def test_competing_workers_skip_what_the_other_claimed() -> None:
    store = Store([f"item-{n:03d}" for n in range(60)])
    first: list[str] = []
    second: list[str] = []
    await run_until_empty(Worker(store, first), Worker(store, second), store=store)
    assert sorted(first + second) == [f"item-{n:03d}" for n in range(60)]
    assert first
    assert second


async def test_stale_candidates_are_followed_by_a_fresh_look() -> None:
    """Candidates left from an earlier look, all taken meanwhile by another process: the
    worker looks again at once rather than idling while items are due."""
    store = Store([f"item-{n:03d}" for n in range(8)])
    handled: list[str] = []
    worker = Worker(store, handled, concurrency=1)
    worker._candidates = [
        Due(tenant_id="tenant", id="taken-1"),
        Due(tenant_id="tenant", id="taken-2"),
    ]
    assert await worker._next(1) == [{"_id": "item-000"}]
    assert store.due_queries == 1


async def test_one_claim_takes_as_many_items_as_there_are_free_slots() -> None:
    """Four free slots: the first claim asks for four items at once; a claim is made again
    only when a slot is free, and never for more items than there are free slots."""
    store = Store([f"item-{n:03d}" for n in range(20)])
    handled: list[str] = []
    await run_until_empty(Worker(store, handled, concurrency=4), store=store)
    assert sorted(handled) == [f"item-{n:03d}" for n in range(20)]
    assert store.claims[0] == ["item-000", "item-001", "item-002", "item-003"]
    assert all(1 <= len(claim) <= 4 for claim in store.claims)
    assert len(store.claims) < 20  # fewer claims than items


async def test_after_a_look_that_found_all_that_was_due_the_next_waits_for_a_wake() -> None:
    """A look that found fewer items than it asked for found all that was due: a slot freed
    afterwards is no reason to look again (each such look came back empty, three for every
    claim under load). A wake, or the idle second, is."""
    store = Store(["item-000", "item-001", "item-002"])
    handled: list[str] = []
    worker = Worker(store, handled, concurrency=4)
    stopping = asyncio.Event()
    task = asyncio.create_task(worker.run(stopping))
    await asyncio.wait_for(store.empty.wait(), 5)
    await asyncio.sleep(0.3)  # the three handled, their slots free again
    assert sorted(handled) == ["item-000", "item-001", "item-002"]
    assert store.due_queries == 1
    store.waiting.append("item-003")
    store.empty.clear()
    worker.wake()
    await asyncio.wait_for(store.empty.wait(), 5)
    await asyncio.sleep(0.05)
    assert handled[-1] == "item-003"
    assert store.due_queries == 2
    stopping.set()
    worker.wake()
    await task


async def _running(worker: Worker) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stopping = asyncio.Event()
    task = asyncio.create_task(worker.run(stopping))
    await asyncio.sleep(0.05)  # its first look, at an empty queue
    return stopping, task


async def _stop(worker: Worker, stopping: asyncio.Event, task: asyncio.Task[None]) -> None:
    stopping.set()
    worker.wake()
    await asyncio.wait_for(task, 5)


class SlowWorker(Worker):
    """Each item takes ``seconds``; ``busy`` counts the items in hand at most."""

    def __init__(self, store: Store, handled: list[str], concurrency: int, seconds: float) -> None:
        super().__init__(store, handled, concurrency)
        self.seconds = seconds
        self.in_hand = 0
        self.busy = 0

    async def handle(self, item: dict[str, Any]) -> None:
        self.in_hand += 1
        self.busy = max(self.busy, self.in_hand)
        await asyncio.sleep(self.seconds)
        self.handled.append(item["_id"])
        self.in_hand -= 1


async def handled_all(handled: list[str], count: int) -> None:
    for _ in range(500):
        if len(handled) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"handled only {handled}")


async def test_items_handed_over_start_at_once_with_no_look_and_no_claim() -> None:
    """Items the process queued leased to its worker are handled when handed over, without
    a look for due items or a claim; the room not used is free again."""
    store = Store([])
    handled: list[str] = []
    worker = Worker(store, handled, concurrency=3)
    stopping, task = await _running(worker)
    looks = store.due_queries
    reservation = worker.reserve(5)
    leasing = reservation.leasing(NOW)
    assert leasing is not None
    assert (leasing.slots, leasing.owner, leasing.until) == (5, worker.owner, NOW + worker.lease)
    reservation.hand_over([{"_id": "mine-1"}, {"_id": "mine-2"}])
    await handled_all(handled, 2)
    assert handled == ["mine-1", "mine-2"]
    assert (store.due_queries, store.claims) == (looks, [])
    # 3 slots and 4 items a slot waiting: all of it free again.
    again = worker.reserve(100)
    assert again.slots == 15
    assert worker.reserve(1).leasing(NOW) is None
    again.release()
    last = worker.reserve(1)
    assert last.slots == 1
    last.release()
    await _stop(worker, stopping, task)


async def test_items_handed_over_beyond_the_free_slots_wait_for_them_in_order() -> None:
    """More items than slots: no more are in hand at once than the worker has slots; the
    others wait in memory and start as slots free, in the order handed over."""
    store = Store([])
    handled: list[str] = []
    worker = SlowWorker(store, handled, concurrency=2, seconds=0.02)
    stopping, task = await _running(worker)
    reservation = worker.reserve(6)
    reservation.hand_over([{"_id": f"mine-{n}"} for n in range(6)])
    await handled_all(handled, 6)
    await _stop(worker, stopping, task)
    assert handled == [f"mine-{n}" for n in range(6)]
    assert worker.busy == 2
    assert store.claims == []


async def test_an_item_that_waited_a_sixth_of_its_lease_is_renewed_before_it_starts() -> None:
    """An item handed over that waited for a slot a sixth of its lease has its lease renewed
    first, and is handled as renewed; one whose renewal fails (its lease lapsed and it was
    claimed meanwhile) is not handled by this copy."""
    for renewable, expected in ((True, ["first", "waited"]), (False, ["first"])):
        store = Store([])
        handled: list[str] = []
        worker = SlowWorker(store, handled, concurrency=1, seconds=0.1)
        worker._lease = dt.timedelta(seconds=0.3)  # a sixth: 50 ms
        worker.renewable = renewable
        stopping, task = await _running(worker)
        worker.reserve(2).hand_over([{"_id": "first"}, {"_id": "waited"}])
        await asyncio.sleep(0.3)
        assert handled == expected
        assert worker.renewed == ["waited"]
        await _stop(worker, stopping, task)


async def test_a_worker_not_running_keeps_no_room() -> None:
    """Before its loop runs, once it is stopping, and after it ended, a worker takes nothing
    over: the items are queued due, for whichever process claims them."""
    store = Store([])
    worker = Worker(store, [], concurrency=2)
    assert worker.reserve(2).leasing(NOW) is None
    stopping, task = await _running(worker)
    stopping.set()
    assert worker.reserve(2).leasing(NOW) is None
    worker.wake()
    await asyncio.wait_for(task, 5)
    assert worker.reserve(2).leasing(NOW) is None


async def test_a_stopping_worker_gives_back_the_items_it_was_handed_and_did_not_start() -> None:
    """Stopped while a reservation's items are being committed, the worker waits for them
    to be handed over and gives back those it has not started (due at once, for the next
    process), rather than leaving them to their leases or starting a new round of them."""
    store = Store([])
    handled: list[str] = []
    worker = SlowWorker(store, handled, concurrency=1, seconds=0.1)
    stopping, task = await _running(worker)
    worker.reserve(1).hand_over([{"_id": "in-hand"}])
    reservation = worker.reserve(2)
    await asyncio.sleep(0.01)
    stopping.set()
    worker.wake()
    await asyncio.sleep(0.05)
    assert not task.done()  # the reservation is still open
    reservation.hand_over([{"_id": "committed-1"}, {"_id": "committed-2"}])
    await asyncio.wait_for(task, 5)
    assert handled == ["in-hand"]
    assert worker.given_back == ["committed-1", "committed-2"]
    with pytest.raises(ValueError, match="1 items handed over for 0 slots"):
        reservation.hand_over([{"_id": "late"}])  # handed over: no room is left


async def test_items_handed_over_while_a_claim_is_made_start_after_it() -> None:
    """A claim holds the free slots while it looks and claims: items handed over meanwhile
    wait, start in the slots the claim did not fill, and never more are in hand than the
    worker has slots."""
    store = Store([])
    looking = asyncio.Event()
    go_on = asyncio.Event()
    due = store.due

    async def slow_due(limit: int) -> list[Due]:
        looking.set()
        await go_on.wait()
        return await due(limit)

    store.due = slow_due  # type: ignore[method-assign]
    handled: list[str] = []
    worker = SlowWorker(store, handled, concurrency=3, seconds=0.02)
    store.waiting.append("due-1")
    stopping = asyncio.Event()
    task = asyncio.create_task(worker.run(stopping))
    await asyncio.wait_for(looking.wait(), 5)
    worker.reserve(3).hand_over([{"_id": f"mine-{n}"} for n in range(3)])
    assert handled == []
    go_on.set()
    await handled_all(handled, 4)
    await _stop(worker, stopping, task)
    assert sorted(handled) == ["due-1", "mine-0", "mine-1", "mine-2"]
    assert worker.busy == 3


async def test_items_handed_over_and_items_due_take_turns() -> None:
    """Items waiting in memory and items due in the store: a due item found meanwhile takes
    the next slot freed, and then the freed slots alternate between them, so neither waits
    behind all of the other (due items are retries, items queued due, another process's)."""
    store = Store([])
    handled: list[str] = []
    worker = SlowWorker(store, handled, concurrency=1, seconds=0.03)
    stopping, task = await _running(worker)
    worker.reserve(3).hand_over([{"_id": f"mine-{n}"} for n in range(3)])
    await asyncio.sleep(0.01)  # mine-0 in hand
    store.waiting += ["due-0", "due-1", "due-2"]
    worker.wake()
    await handled_all(handled, 6)
    await _stop(worker, stopping, task)
    assert handled == ["mine-0", "due-0", "mine-1", "due-1", "mine-2", "due-2"]


async def test_a_lease_handed_over_ends_at_a_time_the_store_keeps() -> None:
    """The lease's end is written to MongoDB (milliseconds) and kept in memory, where a
    renewal matches it against the stored one: it is cut to milliseconds in both."""
    store = Store([])
    worker = Worker(store, [], concurrency=1)
    stopping, task = await _running(worker)
    reservation = worker.reserve(1)
    leasing = reservation.leasing(NOW.replace(microsecond=123456))
    assert leasing is not None
    assert leasing.until == NOW.replace(microsecond=123000) + worker.lease
    reservation.release()
    await _stop(worker, stopping, task)
