"""The tenants this process serves, in memory: the tenants file's, then the stored ones,
followed by polling MongoDB. The interceptors, the queues and the webhook bridge read it on
every request, so a lookup never waits on the database."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Mapping

import structlog
from pymongo.errors import PyMongoError

from server.domain.tenant import (
    StoredTenant,
    Tenant,
)
from server.repositories.mongo import Document
from server.repositories.tenants import MongoTenantStore

log = structlog.get_logger(__name__)

#: How often recent changes are read, and how often everything is.
POLL_SECONDS = 1.0
FULL_RELOAD_SECONDS = 60.0
#: Recent changes are read this far back from the newest seen, for writers whose clocks lag.
CLOCK_SLACK = dt.timedelta(minutes=2)
#: A tenant this process wrote is kept over a full reload that began before the write.
_REMEMBERED_SECONDS = 30.0


class TenantDirectory:
    """Every tenant this process may serve: the file's, then the stored ones, in memory."""

    def __init__(
        self,
        *,
        file_tenants: Mapping[str, Tenant],
        store: MongoTenantStore | None,
        poll_seconds: float = POLL_SECONDS,
        full_reload_seconds: float = FULL_RELOAD_SECONDS,
    ) -> None:
        self._file = dict(file_tenants)
        self._store = store
        self._stored: dict[str, StoredTenant] = {}
        self._remembered: dict[str, float] = {}
        self._poll_seconds = poll_seconds
        self._full_reload_seconds = full_reload_seconds
        self._newest: dt.datetime | None = None
        self._loaded = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        if store is None:
            self._loaded.set()

    def get(self, tenant_id: str, /) -> Tenant | None:
        """The tenant, or None when unknown. A file tenant shadows a stored one."""
        tenant = self._file.get(tenant_id)
        if tenant is not None:
            return tenant
        stored = self._stored.get(tenant_id)
        return stored.tenant if stored else None

    def from_file(self, tenant_id: str) -> bool:
        """Whether the tenants file configures this tenant (the API may not change it)."""
        return tenant_id in self._file

    def tenants(self) -> list[Tenant]:
        """Every known tenant."""
        stored = [s.tenant for key, s in self._stored.items() if key not in self._file]
        return [*self._file.values(), *stored]

    @property
    def loaded(self) -> bool:
        """Whether the stored tenants have been read at least once."""
        return self._loaded.is_set()

    async def wait_loaded(self) -> None:
        """Until the stored tenants have been read."""
        await self._loaded.wait()

    def remember(self, stored: StoredTenant) -> None:
        """Take a write this process made, without waiting for the next poll."""
        self._take(stored)
        self._remembered[stored.tenant.id] = time.monotonic()

    async def start(self) -> None:
        """Follow the store in the background."""
        if self._store is not None and self._task is None:
            self._task = asyncio.create_task(self._follow(self._store), name="tenant-directory")

    async def close(self) -> None:
        """Stop following the store."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _follow(self, store: MongoTenantStore) -> None:
        failing = False
        next_full = 0.0
        while True:
            try:
                if time.monotonic() >= next_full or self._newest is None:
                    self._reload(store, await store.documents())
                    next_full = time.monotonic() + self._full_reload_seconds
                else:
                    since = self._newest - CLOCK_SLACK
                    for document in await store.changed_since(since):
                        self._apply(store, document)
                self._loaded.set()
                if failing:
                    log.info("tenant_directory_recovered", tenants=len(self._stored))
                    failing = False
            except asyncio.CancelledError:
                raise
            except PyMongoError as exc:
                if not failing:
                    log.warning("tenant_directory_unreachable", error=str(exc))
                    failing = True
                # Whatever changed meanwhile, the next successful read gets all of it.
                next_full = 0.0
            except Exception:
                # A bug must not stop this process from following tenant changes for good.
                log.exception("tenant_directory_failed")
                failing = True
                next_full = 0.0
            await asyncio.sleep(self._poll_seconds)

    def _reload(self, store: MongoTenantStore, documents: list[Document]) -> None:
        """Replace the view with every stored document."""
        fresh: dict[str, StoredTenant] = {}
        for document in documents:
            self._note_time(document)
            stored = store.try_decode(document)
            if stored is not None:
                fresh[stored.tenant.id] = stored
        cutoff = time.monotonic() - _REMEMBERED_SECONDS
        for tenant_id, when in list(self._remembered.items()):
            if when < cutoff:
                del self._remembered[tenant_id]
                continue
            # Written here after the read began: the read may not have seen it yet.
            mine, read = self._stored.get(tenant_id), fresh.get(tenant_id)
            if mine is not None and (read is None or read.revision < mine.revision):
                fresh[tenant_id] = mine
        self._stored = fresh

    def _apply(self, store: MongoTenantStore, document: Document) -> None:
        self._note_time(document)
        stored = store.try_decode(document)
        if stored is None:
            # Serving a tenant with credentials this process cannot read would fail every
            # webhook and send; refusing it says so at once.
            self._stored.pop(str(document.get("_id")), None)
            return
        self._take(stored)

    def _take(self, stored: StoredTenant) -> None:
        current = self._stored.get(stored.tenant.id)
        if current is None or current.revision <= stored.revision:
            self._stored[stored.tenant.id] = stored

    def _note_time(self, document: Document) -> None:
        stamp = document.get("update_time")
        if isinstance(stamp, dt.datetime) and (self._newest is None or stamp > self._newest):
            self._newest = stamp
