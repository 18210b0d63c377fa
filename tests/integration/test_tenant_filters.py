"""The suite-wide check that every command the service sends on a tenant's collection names
its tenant (tests/support/mongo_commands.py) sees real commands from the service's code, and
the audit heads of an older database get their tenant_id at start-up."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from devstack.stack import Endpoints
from server.repositories.analytics import MongoAnalytics
from server.repositories.audit import AuditRecord, MongoAuditLog
from server.repositories.mongo import (
    ALERTS,
    AUDIT_HEADS,
    DELIVERIES,
    Document,
    Transactions,
    create_indexes,
    update_and_get,
)
from server.settings import AlertSettings
from server.worker.notifier import Notifier
from tests.support.mongo_commands import CHECK


@pytest.fixture
async def database(stack: Endpoints) -> AsyncIterator[AsyncDatabase[Document]]:
    client: AsyncMongoClient[Document] = AsyncMongoClient(stack.mongodb_uri, tz_aware=True)
    database = client[f"tenant_filters_{uuid.uuid4().hex[:8]}"]
    await create_indexes(database)
    yield database
    await client.drop_database(database.name)
    await client.close()


async def test_a_command_of_the_service_without_its_tenant_is_caught(
    database: AsyncDatabase[Document],
) -> None:
    CHECK.take()
    await update_and_get(database[DELIVERIES], {"_id": "d1"}, {"$set": {"state": "x"}})
    caught = CHECK.take()  # taken here, so that this test's own teardown does not fail it
    assert {(item.command, item.collection, item.shape) for item in caught} == {
        ("update", DELIVERIES, "filter {_id}")
    }
    assert caught[0].where.startswith("server/repositories/mongo.py:")


async def test_audit_heads_of_an_older_database_get_their_tenant_and_the_chain_goes_on(
    database: AsyncDatabase[Document],
) -> None:
    audit = MongoAuditLog(database=database)
    transactions = Transactions(client=database.client)
    # A head as older versions wrote it: the tenant in _id only.
    await database[AUDIT_HEADS].insert_one({"_id": "acme", "sequence": 4, "hash": "ab" * 32})
    await create_indexes(database)
    head = await audit.head("acme")
    assert head is not None
    assert (head["tenant_id"], head["sequence"]) == ("acme", 4)
    record = AuditRecord(
        occur_time=dt.datetime.now(dt.UTC),
        actor_id="operator",
        action="tenant.update",
        resource_type="tenant",
        resource_id="acme",
        detail="{}",
        event_id="e1",
    )
    sequence = await transactions.run(lambda tx: audit.append("acme", record, tx=tx))
    assert sequence == 5


async def test_an_alert_claimed_by_an_older_version_can_be_claimed_again_after_start_up(
    database: AsyncDatabase[Document],
) -> None:
    """An older version's claim held the tenant in _id only: without its tenant_id, no claim
    would match it again, the insert would find its _id taken, and the alert would never be
    sent again."""
    long_ago = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    await database[ALERTS].insert_one({"_id": "a:b:failure_rate", "last_sent_time": long_ago})
    await create_indexes(database)
    notifier = Notifier(
        database=database,
        analytics=MongoAnalytics(database=database),
        settings=AlertSettings(),
    )
    now = dt.datetime.now(dt.UTC)
    assert await notifier._claim("a:b", "failure_rate", now)  # a tenant id may hold a colon
    assert not await notifier._claim("a:b", "failure_rate", now)  # once per interval
    stored = await database[ALERTS].find_one({"_id": "a:b:failure_rate"})
    assert stored is not None
    assert stored["tenant_id"] == "a:b"
