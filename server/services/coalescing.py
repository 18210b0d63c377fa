"""Lookups made by concurrent tasks in one turn of the event loop, sent as one query.

A queue worker claims a few items at once and handles each in a task of its own; each reads
what its item needs (its message, its conversation, whether an earlier item waits). Those
tasks start together, so their reads fall in the same turn of the event loop, and a
Coalescer sends them as one ``load_many`` call (one ``$in`` query) instead of one round trip
each. A key asked for twice in a turn is loaded once. A lookup alone costs one extra turn of
the loop, nothing more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Coalescer(Generic[K, V]):
    """``get(key)`` for many callers, loaded together by ``load_many`` (keys missing from its
    answer are None). A failure of ``load_many`` is raised to every caller of that turn."""

    def __init__(
        self,
        load_many: Callable[[Sequence[K]], Awaitable[Mapping[K, V]]],
        *,
        max_keys: int = 256,
    ) -> None:
        self._load_many = load_many
        self._max_keys = max_keys
        self._waiting: dict[K, list[asyncio.Future[V | None]]] = {}
        self._scheduled = False
        #: The loads in flight (a task must be referenced until it is done).
        self._loads: set[asyncio.Task[None]] = set()

    async def get(self, key: K) -> V | None:
        """The value under ``key``, loaded with the other keys asked for in this turn."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[V | None] = loop.create_future()
        self._waiting.setdefault(key, []).append(future)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._dispatch)
        return await future

    def _dispatch(self) -> None:
        self._scheduled = False
        waiting, self._waiting = self._waiting, {}
        keys = list(waiting)
        for start in range(0, len(keys), self._max_keys):
            part = {key: waiting[key] for key in keys[start : start + self._max_keys]}
            task = asyncio.get_running_loop().create_task(self._load(part))
            self._loads.add(task)
            task.add_done_callback(self._loads.discard)

    async def _load(self, waiting: dict[K, list[asyncio.Future[V | None]]]) -> None:
        # Callers that were cancelled meanwhile are left out; none left, nothing is read.
        keys = [key for key, futures in waiting.items() if not all(f.done() for f in futures)]
        if not keys:
            return
        try:
            found = await self._load_many(keys)
        except asyncio.CancelledError:  # the loop is closing: so are its callers
            for futures in waiting.values():
                for future in futures:
                    future.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - handed to every caller, who raises it
            for futures in waiting.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            return
        for key, futures in waiting.items():
            for future in futures:
                if not future.done():
                    future.set_result(found.get(key))
