"""Stored tenants (written by TenantService) and the live directory every process reads.

Tenants come from two places. The tenants file (``CHAT_TENANTS_FILE``) is read at start-up and
is the operator's: its tenants cannot be changed through the API. Tenants created through
``UpsertTenant`` live in MongoDB, one document per tenant with a revision for optimistic
concurrency, their secrets sealed by :class:`SecretBox`.

Each process (servers, bridge) holds every tenant in memory, so the interceptor chain and the
webhook bridge look tenants up without a database round trip. The copy is kept current by
polling: every second, the documents changed recently (their ``update_time``); every minute,
all of them (which also catches documents removed or edited by hand). A tenant disabled on one
server is refused by all of them within about a second. Polling rather than a change stream:
it costs one small query per second per process whatever the write load, where a change
stream's cursor is woken by every write on some servers (the embedded SecantusDB wakes it on
writes to any collection, a third of its work under SendMessage load). If MongoDB is
unreachable, the process keeps the last known configuration and catches up when it is back.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import fields
from typing import Any

import structlog
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from server.domain.errors import SecretUnreadableError
from server.domain.tenant import (
    CHANNEL_TYPES,
    MESSENGER_PAGE,
    NON_STRING_FIELDS,
    WHATSAPP_NUMBER,
    AddressTakenError,
    ChannelCredentials,
    Quotas,
    RevisionConflictError,
    StoredTenant,
    Tenant,
    TenantDocumentError,
    secret_fields,
)
from server.repositories.mongo import TENANTS, Document
from server.repositories.secrets import SecretBox

log = structlog.get_logger(__name__)


def _mapping(value: object, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TenantDocumentError(f"{where} is not a document")
    return value


def _plain_field(name: str, value: object, where: str) -> Any:
    """A channel field stored as itself (a list of strings, a count), checked."""
    if NON_STRING_FIELDS[name] is tuple:
        if value == "":
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TenantDocumentError(f"{where} is not a list of strings")
        return tuple(value)
    if value == "":
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TenantDocumentError(f"{where} is not a non-negative integer")
    return value


class TenantStoreDisabledError(Exception):
    """Stored tenants cannot be written: no secrets key is configured."""


class MongoTenantStore:
    """Tenants in the ``tenants`` collection, ``_id`` = tenant id."""

    def __init__(self, *, database: AsyncDatabase[Document], secrets: SecretBox | None) -> None:
        self._collection = database[TENANTS]
        self._secrets = secrets

    @property
    def writable(self) -> bool:
        """Whether secrets can be sealed (a key is configured)."""
        return self._secrets is not None

    def fingerprint(self, request: bytes) -> str:
        """A keyed digest of a request that holds secrets ("" without a key: such requests
        are refused anyway)."""
        return self._secrets.fingerprint(request) if self._secrets is not None else ""

    async def get(self, tenant_id: str) -> StoredTenant | None:
        """The stored tenant; None when it was never stored."""
        document = await self._collection.find_one({"_id": tenant_id})
        return self.decode(document) if document else None

    async def all(self) -> list[StoredTenant]:
        """Every stored tenant that opens under this key (others are logged and skipped)."""
        stored = []
        async for document in self._collection.find({}):
            decoded = self.try_decode(document)
            if decoded is not None:
                stored.append(decoded)
        return stored

    async def save(
        self,
        tenant: Tenant,
        *,
        expected_revision: int | None,
        tx: AsyncClientSession | None = None,
    ) -> StoredTenant:
        """Insert (``expected_revision`` None) or replace the revision that was read.
        RevisionConflictError when another writer came first; AddressTakenError when another
        tenant has the same phone number id or page id (unique indexes)."""
        revision = (expected_revision or 0) + 1
        document = self._encode(tenant, revision)
        try:
            if expected_revision is None:
                await self._collection.insert_one(document, session=tx)
            else:
                # A document written by hand may have no revision: it counts as 0.
                current = {"$in": [0, None]} if expected_revision == 0 else expected_revision
                result = await self._collection.replace_one(
                    {"_id": tenant.id, "revision": current}, document, session=tx
                )
                if result.matched_count == 0:
                    raise RevisionConflictError(tenant.id)
        except DuplicateKeyError as exc:
            pattern = (exc.details or {}).get("keyPattern") or {}
            for field in (WHATSAPP_NUMBER, MESSENGER_PAGE):
                if field in pattern or field in str(exc):
                    raise AddressTakenError(field) from None
            raise RevisionConflictError(tenant.id) from None
        return StoredTenant(tenant=tenant, revision=revision)

    async def changed_since(self, since: dt.datetime) -> list[Document]:
        """The documents written (by this store) at or after ``since``."""
        return [d async for d in self._collection.find({"update_time": {"$gte": since}})]

    async def documents(self) -> list[Document]:
        """Every stored document."""
        return [d async for d in self._collection.find({})]

    def decode(self, document: Document) -> StoredTenant:
        """The tenant in ``document``. SecretUnreadableError when a secret does not open,
        TenantDocumentError when the document is not one this store wrote (edited by hand)."""
        tenant_id = document.get("_id")
        if not isinstance(tenant_id, str):
            raise TenantDocumentError("_id is not a string")
        channels: dict[str, Any] = {}
        for name, raw in _mapping(document.get("channels"), "channels").items():
            cls = CHANNEL_TYPES.get(name)
            if cls is not None:
                channels[name] = self._channel(tenant_id, name, cls, raw)
        quotas = _mapping(document.get("quotas"), "quotas")
        rate = quotas.get("requests_per_second", 0.0)
        burst = quotas.get("burst", 0)
        if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 <= rate < math.inf:
            raise TenantDocumentError("quotas.requests_per_second is not a non-negative number")
        if not isinstance(burst, int) or isinstance(burst, bool) or burst < 0:
            raise TenantDocumentError("quotas.burst is not a non-negative integer")
        enabled = document.get("enabled", True)
        display_name = document.get("display_name", "")
        update_time = document.get("update_time")
        revision = document.get("revision", 0)
        if not isinstance(enabled, bool):
            raise TenantDocumentError("enabled is not a boolean")
        if not isinstance(display_name, str):
            raise TenantDocumentError("display_name is not a string")
        if update_time is not None and not isinstance(update_time, dt.datetime):
            raise TenantDocumentError("update_time is not a date")
        if not isinstance(revision, int) or isinstance(revision, bool):
            raise TenantDocumentError("revision is not an integer")
        tenant = Tenant(
            id=tenant_id,
            enabled=enabled,
            display_name=display_name,
            channels=ChannelCredentials(**channels),
            quotas=Quotas(requests_per_second=float(rate), burst=burst),
            update_time=update_time,
        )
        return StoredTenant(tenant=tenant, revision=revision)

    def _channel(self, tenant_id: str, name: str, cls: type[Any], raw: object) -> Any:
        """One channel's record, its secrets opened."""
        secrets = secret_fields(cls)
        values = {}
        for f in fields(cls):
            value = _mapping(raw, f"channels.{name}").get(f.name, "")
            if f.name in NON_STRING_FIELDS:
                values[f.name] = _plain_field(f.name, value, f"channels.{name}.{f.name}")
                continue
            if not isinstance(value, str):
                raise TenantDocumentError(f"channels.{name}.{f.name} is not a string")
            if f.name in secrets and value:
                value = self._open(value, context=f"{tenant_id}/{name}/{f.name}")
            values[f.name] = value
        return cls(**values)

    def try_decode(self, document: Document) -> StoredTenant | None:
        """The tenant in ``document``, or None (logged) when this process cannot read it: one
        bad document must not stop the others from loading. Its callers are then refused as
        unknown."""
        try:
            return self.decode(document)
        except SecretUnreadableError:
            return None  # logged by _open, with which field
        except Exception as exc:  # noqa: BLE001 - whatever is wrong, the rest still load
            log.error(  # noqa: TRY400 - the cause is the document, not this code
                "tenant_document_invalid", tenant_id=str(document.get("_id")), error=str(exc)
            )
            return None

    def _open(self, value: str, *, context: str) -> str:
        if self._secrets is None:
            log.error("tenant_secret_unreadable", context=context, reason="no secrets key")
            raise SecretUnreadableError("no secrets key is configured")
        try:
            return self._secrets.open(value, context=context)
        except SecretUnreadableError:
            # No traceback: the cause is the key or the stored value, not this code.
            log.error(  # noqa: TRY400
                "tenant_secret_unreadable", context=context, reason="wrong key or tampered"
            )
            raise

    def _encode(self, tenant: Tenant, revision: int) -> Document:
        if self._secrets is None:
            raise TenantStoreDisabledError("no tenant secrets key is configured")
        channels: dict[str, Any] = {}
        for name in CHANNEL_TYPES:
            record = getattr(tenant.channels, name)
            if record is None:
                continue
            secrets = secret_fields(type(record))
            values = {}
            for f in fields(record):
                value = getattr(record, f.name)
                if isinstance(value, tuple):
                    value = list(value)
                if f.name in secrets and value:
                    value = self._secrets.seal(value, context=f"{tenant.id}/{name}/{f.name}")
                values[f.name] = value
            channels[name] = values
        return {
            "_id": tenant.id,
            "enabled": tenant.enabled,
            "display_name": tenant.display_name,
            "channels": channels,
            "quotas": {
                "requests_per_second": tenant.quotas.requests_per_second,
                "burst": tenant.quotas.burst,
            },
            "update_time": tenant.update_time,
            "revision": revision,
        }
