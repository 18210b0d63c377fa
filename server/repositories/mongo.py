"""Collections, their indexes (created at start-up), and the transaction helper."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from typing import Any, TypeVar

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from server.domain.errors import AlreadyExists
from server.domain.queues import Due
from server.domain.tenant import MESSENGER_PAGE, WHATSAPP_NUMBER

Document = dict[str, Any]
T = TypeVar("T")

CONVERSATIONS = "conversations"
MESSAGES = "messages"
OUTBOX = "outbox"
IDEMPOTENCY = "idempotency"
LOCKS = "locks"
USERS = "users"
#: Platform events already ingested (deduplication of platform retries).
INGESTED_EVENTS = "ingested_events"
#: The durable queue of inbound messages waiting for their reply.
REPLY_JOBS = "reply_jobs"
#: Batches of platform events stored whole, to be applied after the call (IngestEvents'
#: apply_later: a webhook too large to apply within the platform's deadline).
INGEST_INBOX = "ingest_inbox"
#: The durable outbound delivery queue (and its dead letters: status FAILED).
DELIVERIES = "deliveries"
#: Receipts that arrived before their message was recorded as sent (see services/receipts).
EARLY_RECEIPTS = "early_receipts"
#: The event worker's collections.
HANDLED_EVENTS = "handled_events"
ANALYTICS_MINUTES = "analytics_minutes"
AUDIT_LOG = "audit_log"
AUDIT_HEADS = "audit_heads"
DEAD_LETTERS = "dead_letters"
ALERTS = "alerts"
#: Tenants configured through TenantService (tenants from the tenants file are not stored).
TENANTS = "tenants"
#: GridFS bucket for media bytes (collections media.files and media.chunks).
MEDIA_BUCKET = "media"
MEDIA_FILES = f"{MEDIA_BUCKET}.files"

DUPLICATE_KEY_CODE = 11000

ACTIVE = "ACTIVE"
CLOSED = "CLOSED"

#: Every query path has an index; each query filters on tenant_id first.
INDEXES: dict[str, list[IndexModel]] = {
    CONVERSATIONS: [
        # One active conversation per user and channel: concurrent first messages cannot
        # start two.
        IndexModel(
            [("tenant_id", ASCENDING), ("user_id", ASCENDING), ("channel", ASCENDING)],
            unique=True,
            partialFilterExpression={"status": ACTIVE},
            name="one_active_per_user_channel",
        ),
        # Listing is by start time (immutable), so pages stay stable while conversations move.
        IndexModel(
            [("tenant_id", ASCENDING), ("create_time", DESCENDING), ("_id", DESCENDING)],
            name="tenant_recent",
        ),
        IndexModel(
            [
                ("tenant_id", ASCENDING),
                ("user_id", ASCENDING),
                ("create_time", DESCENDING),
                ("_id", DESCENDING),
            ],
            name="tenant_user_recent",
        ),
    ],
    MESSAGES: [
        IndexModel(
            [("tenant_id", ASCENDING), ("conversation_id", ASCENDING), ("sequence", ASCENDING)],
            unique=True,
            name="history",
        ),
        IndexModel(
            [("tenant_id", ASCENDING), ("create_time", DESCENDING), ("_id", DESCENDING)],
            name="tenant_recent",
        ),
        # Receipts name messages by their platform id.
        IndexModel(
            [
                ("tenant_id", ASCENDING),
                ("channel", ASCENDING),
                ("platform_message_id", ASCENDING),
            ],
            name="platform_id",
        ),
    ],
    OUTBOX: [
        # Published events leave the outbox: every document waits, oldest first.
        IndexModel([("position", ASCENDING)], name="position"),
    ],
    MEDIA_FILES: [
        # Content addressing: the same bytes of one tenant are stored once.
        IndexModel(
            [("metadata.tenant_id", ASCENDING), ("metadata.sha256", ASCENDING)],
            name="tenant_sha256",
        ),
    ],
    INGESTED_EVENTS: [
        # Platforms retry for days (Meta up to 7): a month covers every retry.
        IndexModel([("ingest_time", ASCENDING)], expireAfterSeconds=30 * 86400, name="expiry"),
    ],
    INGEST_INBOX: [
        IndexModel([("due_time", ASCENDING)], name="due"),
        # A tenant's batches are applied in the order they were stored.
        IndexModel([("tenant_id", ASCENDING), ("enqueue_time", ASCENDING)], name="tenant_order"),
    ],
    REPLY_JOBS: [
        IndexModel([("due_time", ASCENDING)], name="due"),
        IndexModel(
            [("tenant_id", ASCENDING), ("conversation_id", ASCENDING), ("sequence", ASCENDING)],
            name="conversation_sequence",
        ),
    ],
    DELIVERIES: [
        IndexModel([("state", ASCENDING), ("due_time", ASCENDING)], name="due"),
        # Sends keep each conversation's order: is an earlier message still waiting?
        IndexModel(
            [("tenant_id", ASCENDING), ("conversation_id", ASCENDING), ("sequence", ASCENDING)],
            name="conversation_sequence",
        ),
        IndexModel(
            [("tenant_id", ASCENDING), ("state", ASCENDING), ("update_time", DESCENDING)],
            name="tenant_failed",
        ),
    ],
    HANDLED_EVENTS: [
        # Applied-event records outlive any redelivery Kafka could make, then go.
        IndexModel([("handle_time", ASCENDING)], expireAfterSeconds=30 * 86400, name="expiry"),
    ],
    ANALYTICS_MINUTES: [
        IndexModel(
            [("tenant_id", ASCENDING), ("minute", ASCENDING), ("channel", ASCENDING)],
            name="tenant_minute",
        ),
    ],
    AUDIT_LOG: [
        IndexModel([("tenant_id", ASCENDING), ("sequence", ASCENDING)], unique=True, name="chain"),
        IndexModel(
            [("tenant_id", ASCENDING), ("actor_id", ASCENDING), ("sequence", DESCENDING)],
            name="actor",
        ),
        IndexModel(
            [("tenant_id", ASCENDING), ("resource_id", ASCENDING), ("sequence", DESCENDING)],
            name="resource",
        ),
    ],
    DEAD_LETTERS: [
        IndexModel([("tenant_id", ASCENDING), ("dead_time", ASCENDING)], name="tenant_recent"),
        IndexModel([("dead_time", ASCENDING)], expireAfterSeconds=30 * 86400, name="expiry"),
    ],
    EARLY_RECEIPTS: [
        IndexModel([("ref", ASCENDING)], name="ref"),
        IndexModel([("expire_time", ASCENDING)], expireAfterSeconds=0, name="expiry"),
    ],
    USERS: [
        IndexModel(
            [("tenant_id", ASCENDING), ("channel", ASCENDING), ("user_id", ASCENDING)],
            unique=True,
            name="identity",
        ),
    ],
    IDEMPOTENCY: [
        IndexModel(
            [("tenant_id", ASCENDING), ("operation", ASCENDING), ("request_id", ASCENDING)],
            unique=True,
            name="request",
        ),
        IndexModel([("expire_time", ASCENDING)], expireAfterSeconds=0, name="expiry"),
    ],
    TENANTS: [
        # Inbound events name the number or page they reached: it must belong to one tenant.
        IndexModel(
            [(WHATSAPP_NUMBER, ASCENDING)],
            unique=True,
            partialFilterExpression={WHATSAPP_NUMBER: {"$exists": True}},
            name="whatsapp_number",
        ),
        IndexModel(
            [(MESSENGER_PAGE, ASCENDING)],
            unique=True,
            partialFilterExpression={MESSENGER_PAGE: {"$exists": True}},
            name="messenger_page",
        ),
    ],
}


async def update_and_get(
    collection: AsyncCollection[Document],
    filter: Document,
    update: Document,
    *,
    read: Document | None = None,
    projection: Document | None = None,
    tx: AsyncClientSession | None = None,
) -> Document | None:
    """What ``find_one_and_update(filter, update, return_document=AFTER)`` returns, in two
    statements: the update of one document, then a read of it; None when nothing matched.

    The embedded store (SecantusDB) runs findAndModify as a scan of the whole collection: 26 ms
    at 3,000 documents, against 3 ms for update_one and 1 ms for the read, so a queue or a
    conversation that grows made every claim and every message slower. ``filter`` names one
    document by ``_id`` and its tenant. In a transaction the read sees the update; outside one
    the read's own filter (``read``, default the tenant and ``_id``) says which state counts as
    the result, such as a claim still held by its owner.
    """
    result = await collection.update_one(filter, update, session=tx)
    if result.matched_count == 0:
        return None
    if read is None:
        read = {key: filter[key] for key in ("_id", "tenant_id") if key in filter}
    return await collection.find_one(read, projection, session=tx)


#: The comment that marks a command spanning tenants by design (a queue's poll for due work):
#: in a sharded cluster it goes to every shard. Every other command names its tenant.
CROSS_TENANT_POLL = "cross-tenant: a queue's poll for due work"


async def due_items(
    collection: AsyncCollection[Document], filter: Document, *, limit: int
) -> list[Due]:
    """The oldest due items of a queue, of every tenant (each claim then names its tenant)."""
    cursor = collection.find(filter, {"_id": 1, "tenant_id": 1}, comment=CROSS_TENANT_POLL)
    documents = await cursor.sort("due_time", ASCENDING).limit(limit).to_list()
    return [Due(tenant_id=document["tenant_id"], id=document["_id"]) for document in documents]


async def find_by_keys(
    collection: AsyncCollection[Document],
    keys: Sequence[tuple[str, str]],
    projection: Document | None = None,
) -> dict[tuple[str, str], Document]:
    """Documents by (tenant, id), in one query; those not found are left out. One $in per
    field, ``_id`` first (point lookups on the embedded store, where an $or of pairs would
    scan); each document's tenant is matched to its key, so no key gets another tenant's."""
    if not keys:
        return {}
    cursor = collection.find(
        {
            "_id": {"$in": sorted({document_id for _, document_id in keys})},
            "tenant_id": {"$in": sorted({tenant_id for tenant_id, _ in keys})},
        },
        {**projection, "tenant_id": 1} if projection is not None else None,
    )
    wanted = set(keys)
    found: dict[tuple[str, str], Document] = {}
    async for document in cursor:
        key = (document["tenant_id"], document["_id"])
        if key in wanted:
            found[key] = document
    return found


async def claim_items(
    collection: AsyncCollection[Document],
    items: Sequence[Due],
    *,
    due: Document,
    update: Document,
) -> list[Document]:
    """Lease those of ``items`` that are still due (``due``: the rest of the filter) with one
    update of them all, then read back exactly those this claim took, in the items' order.

    Each claim marks what it took with an id of its own (``claim``): items another process
    took meanwhile, or this process took in an earlier claim, are not among those read back.
    Each document's update is atomic, so an item goes to one claim only. ``_id`` leads the
    filter, which the embedded store serves as point lookups.
    """
    if not items:
        return []
    ids = [item.id for item in items]
    tenants = sorted({item.tenant_id for item in items})
    scope: Document = {
        "_id": ids[0] if len(ids) == 1 else {"$in": ids},
        "tenant_id": tenants[0] if len(tenants) == 1 else {"$in": tenants},
    }
    claim = uuid.uuid4().hex
    marked = {**update, "$set": {**update.get("$set", {}), "claim": claim}}
    result = await collection.update_many({**scope, **due}, marked)
    if result.modified_count == 0:
        return []
    documents = await collection.find({**scope, "claim": claim}).to_list()
    order = {item_id: n for n, item_id in enumerate(ids)}
    return sorted(documents, key=lambda document: order[document["_id"]])


def alike(items: Iterable[T], key: Callable[[T], Hashable]) -> list[list[T]]:
    """``items`` grouped by ``key``, in order of first appearance: those one statement can
    change together (the embedded store plans a statement once, however many ids it names)."""
    groups: dict[Hashable, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return list(groups.values())


async def create_indexes(database: AsyncDatabase[Document]) -> None:
    """Create every index (a no-op for those that exist)."""
    await _retire_marked_outbox(database)
    await _name_tenants(database)
    for collection, indexes in INDEXES.items():
        await database[collection].create_indexes(indexes)


#: The comment that marks a start-up migration's commands: they find the documents an older
#: version wrote without ``tenant_id`` and give it to them, once.
MIGRATION = "migration: documents of an older version get their tenant_id"


async def _name_tenants(database: AsyncDatabase[Document]) -> None:
    """Audit heads (keyed by the tenant id) and alert claims (keyed ``<tenant>:<condition>``)
    were once written without ``tenant_id``; every command now names it (a shard key's first
    field, and the filter of each claim), so those of an older database get it. Until then an
    old alert claim would match no claim again and the alert would never be sent."""
    legacies: list[tuple[str, Callable[[str], str]]] = [
        (AUDIT_HEADS, str),
        (ALERTS, lambda key: key.rsplit(":", 1)[0]),
    ]
    for collection, tenant_of in legacies:
        legacy = database[collection].find(
            {"tenant_id": {"$exists": False}}, {"_id": 1}, comment=MIGRATION
        )
        async for document in legacy:
            await database[collection].update_one(
                {"_id": document["_id"], "tenant_id": {"$exists": False}},
                {"$set": {"tenant_id": tenant_of(document["_id"])}},
                comment=MIGRATION,
            )


async def _retire_marked_outbox(database: AsyncDatabase[Document]) -> None:
    """Published events were once kept in the outbox, marked, under two indexes of their own;
    now they leave it. Marked events of an older database go (they are in Kafka), and so do
    those indexes, so none is taken for waiting."""
    outbox = database[OUTBOX]
    await outbox.delete_many({"published": True})
    names = {index["name"] async for index in await outbox.list_indexes()}
    for legacy in sorted(names & {"pending", "expiry"}):
        await outbox.drop_index(legacy)


class Transactions:
    """Runs a function in a MongoDB transaction, retried on transient errors (write conflicts)."""

    def __init__(self, *, client: AsyncMongoClient[Document]) -> None:
        self._client = client

    async def run(self, work: Callable[[AsyncClientSession], Awaitable[T]]) -> T:
        """``work`` may run more than once; everything it writes commits together or not at all.

        A unique-index violation aborts the transaction and becomes AlreadyExists.
        """
        try:
            async with self._client.start_session() as session:
                return await session.with_transaction(work)
        except DuplicateKeyError:
            raise AlreadyExists("a record with this key exists", reason="DUPLICATE_KEY") from None
        except BulkWriteError as exc:
            # insert_many reports a duplicate key this way rather than as DuplicateKeyError.
            errors = exc.details.get("writeErrors", [])
            if errors and all(error.get("code") == DUPLICATE_KEY_CODE for error in errors):
                raise AlreadyExists(
                    "a record with this key exists", reason="DUPLICATE_KEY"
                ) from None
            raise
