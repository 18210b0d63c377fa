"""The Coalescer: lookups of one turn of the event loop in one load."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import pytest

from server.services.coalescing import Coalescer


class Store:
    """Values by key, and every load it was asked for."""

    def __init__(self, values: Mapping[str, int], *, fail: bool = False) -> None:
        self.values = dict(values)
        self.loads: list[list[str]] = []
        self.fail = fail
        self.gate: asyncio.Event | None = None

    async def load_many(self, keys: Sequence[str]) -> dict[str, int]:
        self.loads.append(list(keys))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise ConnectionError("store down")
        return {key: self.values[key] for key in keys if key in self.values}


async def test_lookups_of_one_turn_are_one_load_and_each_gets_its_own_value() -> None:
    store = Store({"a": 1, "b": 2, "c": 3})
    coalescer: Coalescer[str, int] = Coalescer(store.load_many)
    found = await asyncio.gather(*(coalescer.get(key) for key in ("a", "b", "missing", "c")))
    assert found == [1, 2, None, 3]
    assert store.loads == [["a", "b", "missing", "c"]]


async def test_tasks_started_together_share_a_load() -> None:
    store = Store({"a": 1, "b": 2})
    coalescer: Coalescer[str, int] = Coalescer(store.load_many)

    async def handle(key: str) -> int | None:
        return await coalescer.get(key)

    tasks = [asyncio.create_task(handle(key)) for key in ("a", "b")]
    assert [await task for task in tasks] == [1, 2]
    assert store.loads == [["a", "b"]]


async def test_a_key_asked_twice_in_a_turn_is_loaded_once() -> None:
    store = Store({"a": 1})
    coalescer: Coalescer[str, int] = Coalescer(store.load_many)
    assert await asyncio.gather(coalescer.get("a"), coalescer.get("a")) == [1, 1]
    assert store.loads == [["a"]]


async def test_lookups_of_later_turns_are_loads_of_their_own() -> None:
    store = Store({"a": 1, "b": 2})
    coalescer: Coalescer[str, int] = Coalescer(store.load_many)
    assert await coalescer.get("a") == 1
    assert await coalescer.get("b") == 2
    assert store.loads == [["a"], ["b"]]


async def test_a_failed_load_is_raised_to_every_caller_of_its_turn() -> None:
    store = Store({"a": 1}, fail=True)
    coalescer: Coalescer[str, int] = Coalescer(store.load_many)
    results = await asyncio.gather(coalescer.get("a"), coalescer.get("b"), return_exceptions=True)
    assert [type(result) for result in results] == [ConnectionError, ConnectionError]
    store.fail = False
    assert await coalescer.get("a") == 1  # the next turn loads again


async def test_a_cancelled_caller_leaves_the_others_their_values() -> None:
    store = Store({"a": 1, "b": 2})
    store.gate = asyncio.Event()
    coalescer: Coalescer[str, int] = Coalescer(store.load_many)
    first = asyncio.create_task(coalescer.get("a"))
    second = asyncio.create_task(coalescer.get("b"))
    await asyncio.sleep(0.01)  # both wait on the one load
    first.cancel()
    store.gate.set()
    assert await second == 2
    with pytest.raises(asyncio.CancelledError):
        await first
    assert store.loads == [["a", "b"]]


async def test_callers_all_cancelled_before_the_load_read_nothing() -> None:
    store = Store({"a": 1})
    coalescer: Coalescer[str, int] = Coalescer(store.load_many)
    task = asyncio.create_task(coalescer.get("a"))
    await asyncio.sleep(0)  # the get has run; its load is scheduled, not started
    task.cancel()
    await asyncio.sleep(0.01)
    assert store.loads == []


async def test_many_keys_are_loaded_in_parts() -> None:
    store = Store({str(n): n for n in range(5)})
    coalescer: Coalescer[str, int] = Coalescer(store.load_many, max_keys=2)
    found = await asyncio.gather(*(coalescer.get(str(n)) for n in range(5)))
    assert found == [0, 1, 2, 3, 4]
    assert store.loads == [["0", "1"], ["2", "3"], ["4"]]
