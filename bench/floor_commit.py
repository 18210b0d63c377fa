"""Group commit for the database floor (bench/floor.py), as the service's
services/group_commit.py does it, and the relay's part in the database (removing published
events from the outbox)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

from pymongo import AsyncMongoClient
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection

Document = dict[str, Any]
I = TypeVar("I")  # noqa: E741 - the conventional name of an item type
R = TypeVar("R")


class Batches(Generic[I, R]):
    """Group commit (services/group_commit.py's): the items waiting while a batch commits are
    committed together by the next, at most ``max_batch`` of them, never two of one key."""

    def __init__(
        self,
        commit: Callable[[list[I]], Awaitable[list[R]]],
        *,
        key: Callable[[I], Hashable],
        max_batch: int,
    ) -> None:
        self._commit = commit
        self._key = key
        self._max_batch = max_batch
        self._queue: list[tuple[I, asyncio.Future[R]]] = []
        self._drainer: asyncio.Task[None] | None = None
        #: Every committed batch: when (time.perf_counter) and its size.
        self.committed: list[tuple[float, int]] = []

    def mean_since(self, start: float) -> float | None:
        """The mean size of the batches committed since ``start`` (None: none)."""
        sizes = [size for when, size in self.committed if when >= start]
        return sum(sizes) / len(sizes) if sizes else None

    async def submit(self, item: I) -> R:
        """Commit ``item`` with whatever else waits; its outcome."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._queue:
            batch: list[tuple[I, asyncio.Future[R]]] = []
            later: list[tuple[I, asyncio.Future[R]]] = []
            keys: set[Hashable] = set()
            for entry in self._queue:
                key = self._key(entry[0])
                if key in keys or len(batch) >= self._max_batch:
                    later.append(entry)
                else:
                    keys.add(key)
                    batch.append(entry)
            self._queue = later
            try:
                outcomes = await self._commit([item for item, _ in batch])
            except Exception as exc:  # noqa: BLE001 - every caller of the batch gets it
                for _, future in batch:
                    future.set_exception(exc)
                continue
            self.committed.append((time.perf_counter(), len(batch)))
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                future.set_result(outcome)


class OutboxRemoval:
    """The relay's part in the database: a published transaction's outbox document is deleted,
    one statement for whatever was published meanwhile (the relay deletes by ``_id`` too)."""

    def __init__(self, outbox: AsyncCollection[Document]) -> None:
        self._outbox = outbox
        self._ids: list[str] = []
        self._task: asyncio.Task[None] | None = None

    def published(self, document_id: str) -> None:
        self._ids.append(document_id)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._remove())

    async def _remove(self) -> None:
        while self._ids:
            ids, self._ids = self._ids, []
            await self._outbox.delete_many({"_id": {"$in": ids}})

    async def flush(self) -> None:
        """Until every published document is deleted."""
        while self._task is not None and not self._task.done():
            await self._task


async def in_transaction(
    client: AsyncMongoClient[Document], work: Callable[[AsyncClientSession], Awaitable[R]]
) -> R:
    """``work`` in one transaction, retried on transient errors (as the service's)."""
    async with client.start_session() as tx:
        return await tx.with_transaction(work)
