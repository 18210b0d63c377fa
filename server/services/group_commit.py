"""Group commit: concurrent writes share one transaction.

Under load the database's cost is per statement and per transaction, not per document, so
the exchanges waiting while one transaction commits are written together by the next: one
bulk statement per collection and one commit for all of them. Each caller is answered only
after the transaction holding its write has committed, so the durability promise is the one
a transaction per call gives. Without contention a batch holds one item and adds no wait.

Items with the same key (a user's channel: its active conversation, or the one its first
message starts) never share a batch: the second waits for the next, so each item's writes see
the state the one before it left, and two starts for one user's channel are never written
together.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

import structlog

from server.tracing.spans import committing, current_traceparent
from server.tracing.state import STATE

log = structlog.get_logger("chat.group_commit")

I = TypeVar("I")  # noqa: E741 - the conventional name of an item type
R = TypeVar("R")


class GroupCommit(Generic[I, R]):
    """Batches ``commit`` calls; one batch in flight at a time."""

    def __init__(
        self,
        commit: Callable[[list[I]], Awaitable[list[R | Exception]]],
        *,
        key: Callable[[I], Hashable],
        trace_key: Callable[[I], Hashable] | None = None,
        max_batch: int = 64,
        on_batch: Callable[[int], None] = lambda _size: None,
        on_orphan: Callable[[I, R], Coroutine[Any, Any, None]] | None = None,
        on_abandoned: Callable[[I], Coroutine[Any, Any, None]] | None = None,
        divisible: tuple[type[Exception], ...] = (),
        name: str = "group_commit",
    ) -> None:
        """``on_orphan`` finishes an item committed after its caller gave up (the caller's
        after-commit work would otherwise never run); ``on_abandoned`` settles an item that
        will never be committed and whose caller gave up (skipped before its batch, or its
        batch failed), since that caller cannot. ``divisible``: errors one item can
        cause (a duplicate key); a batch failing with one is retried item by item, any other
        error goes to every item of the batch. ``name``: the transaction's span (tracing);
        ``trace_key``: what names an item's writes to the tracing (traceparent_for), by
        default its ``key``."""
        self._commit = commit
        self._name = name
        self._key = key
        self._trace_key = trace_key or key
        self._max_batch = max_batch
        self._on_batch = on_batch
        self._on_orphan = on_orphan
        self._on_abandoned = on_abandoned
        self._divisible = divisible
        self._queue: list[tuple[I, asyncio.Future[R]]] = []
        #: While tracing: each waiting item's caller's span (a traceparent), by the item's id.
        self._traces: dict[int, str] = {}
        self._drainer: asyncio.Task[None] | None = None
        self._orphans: set[asyncio.Task[None]] = set()

    async def submit(self, item: I) -> R:
        """Commit ``item`` with whatever else is waiting; its own outcome."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if STATE.enabled:
            # The batch runs in a task of its own; what it writes continues the caller's trace.
            self._traces[id(item)] = current_traceparent()
        if self._drainer is None or self._drainer.done():
            # A context of its own: batch logs must not carry the first caller's request id.
            self._drainer = asyncio.create_task(
                self._drain(), name="group-commit", context=contextvars.Context()
            )
        # A caller cancelled while waiting is skipped; one whose batch is committing is
        # committed, and on_orphan finishes it.
        return await future

    async def _drain(self) -> None:
        batch: list[tuple[I, asyncio.Future[R]]] = []
        try:
            while self._queue:
                batch = []
                later: list[tuple[I, asyncio.Future[R]]] = []
                keys: set[Hashable] = set()
                for entry in self._queue:
                    if entry[1].done():
                        self._traces.pop(id(entry[0]), None)
                        self._abandon(entry[0])
                        continue  # its caller gave up before it was written
                    key = self._key(entry[0])
                    if key in keys or len(batch) >= self._max_batch:
                        later.append(entry)
                    else:
                        keys.add(key)
                        batch.append(entry)
                self._queue = later
                if batch:
                    await self._run(batch)
                    for item, _ in batch:
                        self._traces.pop(id(item), None)
        except Exception:
            log.exception("group commit failed")
        finally:
            # Whatever went wrong here, no caller is left waiting for ever.
            for item, future in [*batch, *self._queue]:
                if future.cancelled():
                    self._abandon(item)
                _settle(future, RuntimeError("the group commit stopped"))
            self._queue = []
            self._traces.clear()

    async def _run(self, batch: list[tuple[I, asyncio.Future[R]]]) -> None:
        try:
            outcomes = await self._traced_commit([item for item, _ in batch])
        except self._divisible as exc:
            if len(batch) == 1:
                _settle(batch[0][1], exc)
                return
            # One item sank the batch (a duplicate request id): each alone, so it gets its
            # own error and the others are written; callers who gave up are not retried.
            log.info("group commit failed; committing one by one", size=len(batch))
            for entry in batch:
                if not entry[1].done():
                    await self._run([entry])
                else:
                    self._abandon(entry[0])
            return
        except Exception as exc:  # noqa: BLE001 - an outage: every caller gets it
            for item, future in batch:
                if future.cancelled():
                    self._abandon(item)
                _settle(future, exc)
            return
        with contextlib.suppress(Exception):
            self._on_batch(len(batch))
        for (item, future), outcome in zip(batch, outcomes, strict=True):
            if future.cancelled():
                if isinstance(outcome, Exception):
                    self._abandon(item)
                else:
                    self._orphan(item, outcome)
            _settle(future, outcome)

    async def _traced_commit(self, items: list[I]) -> list[R | Exception]:
        if not STATE.enabled:
            return await self._commit(items)
        traces = [(self._trace_key(item), self._traces.get(id(item), "")) for item in items]
        with committing(self._name, traces):
            return await self._commit(items)

    def _abandon(self, item: I) -> None:
        if self._on_abandoned is None:
            return
        task = asyncio.create_task(self._on_abandoned(item))
        self._orphans.add(task)
        task.add_done_callback(self._orphans.discard)

    def _orphan(self, item: I, outcome: R) -> None:
        if self._on_orphan is None:
            return
        task = asyncio.create_task(self._on_orphan(item, outcome))
        self._orphans.add(task)
        task.add_done_callback(self._orphans.discard)


def _settle(future: asyncio.Future[R], outcome: R | Exception) -> None:
    if future.done():
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
