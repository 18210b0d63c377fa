"""GroupCommit: waiting items share the next batch, one key per batch, each item its own
outcome, and a failed batch retried item by item."""

from __future__ import annotations

import asyncio

import pytest

from server.services.group_commit import GroupCommit


class DuplicateError(Exception):
    """What one item can cause (a duplicate key)."""


class Recorder:
    """A commit function that holds each batch until released, and records it."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()
        self.fail_batches_with: set[str] = set()

    async def commit(self, items: list[str]) -> list[str | Exception]:
        self.batches.append(list(items))
        await self.release.wait()
        if len(items) > 1 and self.fail_batches_with & set(items):
            raise DuplicateError("a bad item sinks the batch")
        return [ValueError(item) if item.startswith("bad") else item.upper() for item in items]


def key(item: str) -> str:
    return item.split(":", maxsplit=1)[0]


async def test_items_waiting_on_a_commit_share_the_next_one() -> None:
    recorder = Recorder()
    sizes: list[int] = []
    group = GroupCommit(recorder.commit, key=key, on_batch=sizes.append)
    first = asyncio.create_task(group.submit("a:1"))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(group.submit(f"{c}:1")) for c in "bcd"]
    await asyncio.sleep(0)
    recorder.release.set()
    assert await first == "A:1"
    assert [await task for task in rest] == ["B:1", "C:1", "D:1"]
    assert recorder.batches == [["a:1"], ["b:1", "c:1", "d:1"]]
    assert sizes == [1, 3]


async def test_one_key_never_twice_in_a_batch() -> None:
    recorder = Recorder()
    recorder.release.set()
    group = GroupCommit(recorder.commit, key=key)
    results = await asyncio.gather(*(group.submit(f"{c}:{n}") for n in range(3) for c in "xy"))
    assert sorted(results) == sorted(f"{c}:{n}".upper() for n in range(3) for c in "xy")
    for batch in recorder.batches:
        keys = [key(item) for item in batch]
        assert len(keys) == len(set(keys))
    # In submission order per key.
    xs = [item for batch in recorder.batches for item in batch if item.startswith("x")]
    assert xs == ["x:0", "x:1", "x:2"]


async def test_each_item_gets_its_own_outcome_and_a_sunk_batch_is_retried_alone() -> None:
    recorder = Recorder()
    recorder.release.set()
    recorder.fail_batches_with = {"b:1"}
    group = GroupCommit(recorder.commit, key=key, divisible=(DuplicateError,))
    blocker = asyncio.create_task(group.submit("z:1"))
    await asyncio.sleep(0)
    results = await asyncio.gather(
        group.submit("a:1"), group.submit("b:1"), group.submit("bad:1"), return_exceptions=True
    )
    await blocker
    assert results[0] == "A:1"
    assert results[1] == "B:1"  # alone, it commits
    assert isinstance(results[2], ValueError)
    assert ["a:1"] in recorder.batches
    assert ["b:1"] in recorder.batches


async def test_a_batch_of_one_that_fails_fails_its_caller() -> None:
    async def broken(items: list[str]) -> list[str | Exception]:
        raise RuntimeError("down")

    group = GroupCommit(broken, key=key)
    with pytest.raises(RuntimeError, match="down"):
        await group.submit("a:1")


async def test_a_caller_that_gave_up_while_waiting_is_not_written() -> None:
    recorder = Recorder()
    group = GroupCommit(recorder.commit, key=key)
    first = asyncio.create_task(group.submit("a:1"))
    await asyncio.sleep(0)
    gone = asyncio.create_task(group.submit("b:1"))
    kept = asyncio.create_task(group.submit("c:1"))
    await asyncio.sleep(0)
    gone.cancel()
    recorder.release.set()
    await first
    assert await kept == "C:1"
    assert recorder.batches == [["a:1"], ["c:1"]]


async def test_an_outage_fails_the_whole_batch_without_retrying_each() -> None:
    calls: list[list[str]] = []

    async def down(items: list[str]) -> list[str | Exception]:
        calls.append(items)
        await asyncio.sleep(0)
        raise ConnectionError("database down")

    group = GroupCommit(down, key=key, divisible=(DuplicateError,))
    first = asyncio.create_task(group.submit("a:1"))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(group.submit(f"{c}:1")) for c in "bcd"]
    results = await asyncio.gather(first, *rest, return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert calls == [["a:1"], ["b:1", "c:1", "d:1"]]  # no one-by-one retries


async def test_an_item_committed_after_its_caller_left_is_finished_anyway() -> None:
    recorder = Recorder()
    finished: list[tuple[str, str]] = []

    async def finish(item: str, result: str) -> None:
        finished.append((item, result))

    group = GroupCommit(recorder.commit, key=key, on_orphan=finish)
    caller = asyncio.create_task(group.submit("a:1"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert recorder.batches == [["a:1"]]  # committing
    caller.cancel()
    recorder.release.set()
    await asyncio.sleep(0.01)
    assert finished == [("a:1", "A:1")]


async def test_items_of_callers_that_left_and_never_committed_are_abandoned() -> None:
    """Skipped while waiting, or failed after the caller left: ``on_abandoned`` settles them
    (the caller cannot); a committed one is an orphan, not abandoned."""
    recorder = Recorder()
    abandoned: list[str] = []
    finished: list[str] = []

    async def abandon(item: str) -> None:
        abandoned.append(item)

    async def finish(item: str, _result: str) -> None:
        finished.append(item)

    group = GroupCommit(recorder.commit, key=key, on_orphan=finish, on_abandoned=abandon)
    committing = [asyncio.create_task(group.submit(item)) for item in ("a:1", "bad:1")]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert recorder.batches == [["a:1", "bad:1"]]  # committing
    waiting = asyncio.create_task(group.submit("c:1"))
    await asyncio.sleep(0)
    for task in (*committing, waiting):
        task.cancel()
    recorder.release.set()
    await asyncio.sleep(0.01)
    assert sorted(abandoned) == ["bad:1", "c:1"]  # its own error; skipped before its batch
    assert finished == ["a:1"]
    assert recorder.batches == [["a:1", "bad:1"]]


async def test_no_caller_waits_for_ever_when_the_batcher_breaks() -> None:
    recorder = Recorder()
    recorder.release.set()

    def broken_key(item: str) -> str:
        if item.startswith("boom"):
            raise KeyError(item)
        return item

    group = GroupCommit(recorder.commit, key=broken_key)
    results = await asyncio.wait_for(
        asyncio.gather(group.submit("boom:1"), group.submit("a:1"), return_exceptions=True), 2
    )
    assert all(isinstance(r, Exception) for r in results)
