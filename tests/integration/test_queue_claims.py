"""A claim of several queue items at once, on the real store: each item goes to one claim
only, a claim reads back only what it took (not what another claim, of this process or
another, took), items not yet due stay, and one claim spans tenants."""

from __future__ import annotations

import asyncio
import datetime as dt

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from chat.v1 import common_pb2
from server.domain.queues import SENDING, Due, Outgoing, ReplyJob
from server.repositories.deliveries import MongoDeliveries
from server.repositories.ingest import MongoReplyJobs
from server.repositories.mongo import Document, Transactions

NOW = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)
LEASE = dt.timedelta(seconds=60)


async def queued_jobs(
    mongo_client: AsyncMongoClient[Document], jobs: MongoReplyJobs, tenants: list[str], count: int
) -> list[Due]:
    async def work(tx: object) -> None:
        await jobs.enqueue_many(
            [
                ReplyJob(tenants[n % len(tenants)], f"conv-{n}", f"msg-{n}", 1, NOW)
                for n in range(count)
            ],
            tx=tx,  # type: ignore[arg-type]
        )

    await Transactions(client=mongo_client).run(work)  # type: ignore[arg-type]
    return await jobs.due(now=NOW, limit=count)


async def test_competing_claims_take_each_job_once_and_read_back_only_their_own(
    mongo_client: AsyncMongoClient[Document], scratch_database: AsyncDatabase[Document]
) -> None:
    jobs = MongoReplyJobs(database=scratch_database)
    due = await queued_jobs(mongo_client, jobs, ["tenant-a", "tenant-b"], 12)
    assert len(due) == 12

    first, second = await asyncio.gather(
        jobs.claim_many(due[:8], owner="one", now=NOW, lease=LEASE),
        jobs.claim_many(due[4:], owner="two", now=NOW, lease=LEASE),
    )
    taken = [job.id for job in first] + [job.id for job in second]
    assert sorted(taken) == sorted(item.id for item in due)  # every job, each once
    assert {job.owner for job in first} <= {"one"}
    assert {job.owner for job in second} <= {"two"}
    assert all(job.attempts == 1 for job in [*first, *second])
    assert {job.tenant_id for job in [*first, *second]} == {"tenant-a", "tenant-b"}
    order = [item.id for item in due]
    for claimed in (first, second):  # each in the items' order
        assert [job.id for job in claimed] == sorted((job.id for job in claimed), key=order.index)

    # The same owner claiming again takes nothing: its earlier claim's jobs are leased.
    assert await jobs.claim_many(due, owner="one", now=NOW, lease=LEASE) == []
    # Once the leases lapse, all are due again, and one claim takes them all.
    later = NOW + LEASE + dt.timedelta(seconds=1)
    again = await jobs.claim_many(due, owner="one", now=later, lease=LEASE)
    assert [job.id for job in again] == [item.id for item in due]
    assert all(job.attempts == 2 for job in again)


async def test_a_delivery_claim_skips_what_is_not_due(
    mongo_client: AsyncMongoClient[Document], scratch_database: AsyncDatabase[Document]
) -> None:
    deliveries = MongoDeliveries(database=scratch_database)
    messages = [
        common_pb2.Message(id=f"m{n}", conversation_id="c1", sequence=n + 1) for n in range(3)
    ]

    async def work(tx: object) -> None:
        await deliveries.enqueue_many(
            [Outgoing("tenant-a", messages, "user-1", "", NOW)],
            tx=tx,  # type: ignore[arg-type]
        )

    await Transactions(client=mongo_client).run(work)  # type: ignore[arg-type]
    items = [Due(tenant_id="tenant-a", id=message.id) for message in messages]
    await scratch_database["deliveries"].update_one(
        {"_id": "m1", "tenant_id": "tenant-a"}, {"$set": {"due_time": NOW + LEASE}}
    )
    claimed = await deliveries.claim_many(items, owner="one", now=NOW, lease=LEASE)
    assert [d.id for d in claimed] == ["m0", "m2"]
    assert {(d.state, d.owner) for d in claimed} == {(SENDING, "one")}
    # Another tenant's name on an item claims nothing of this one's.
    wrong = [Due(tenant_id="tenant-b", id="m1")]
    assert await deliveries.claim_many(wrong, owner="two", now=NOW + LEASE, lease=LEASE) == []
