"""A claim of several queue items at once, on the real store: each item goes to one claim
only, a claim reads back only what it took (not what another claim, of this process or
another, took), items not yet due stay, and one claim spans tenants. A reply job held behind an
earlier one of its conversation is due again only when woken (or at its deadline)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt

from pymongo import AsyncMongoClient, monitoring
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from chat.v1 import common_pb2
from devstack.stack import Endpoints
from server.domain.queues import (
    REPLY_HOLD_AT_MOST,
    SENDING,
    ClaimedReplyJob,
    Delivery,
    Due,
    Leasing,
    Outgoing,
    Position,
    ReplyJob,
)
from server.repositories.deliveries import MongoDeliveries
from server.repositories.ingest import MongoReplyJobs
from server.repositories.mongo import REPLY_JOBS, Document, Transactions

NOW = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)
LEASE = dt.timedelta(seconds=60)


async def enqueue(
    mongo_client: AsyncMongoClient[Document], jobs: MongoReplyJobs, queued: list[ReplyJob]
) -> None:
    """Queue the jobs in one call, in a transaction (as one webhook's messages are)."""

    async def work(tx: object) -> None:
        await jobs.enqueue_many(queued, tx=tx)  # type: ignore[arg-type]

    await Transactions(client=mongo_client).run(work)  # type: ignore[arg-type]


async def queued_jobs(
    mongo_client: AsyncMongoClient[Document], jobs: MongoReplyJobs, tenants: list[str], count: int
) -> list[Due]:
    queued = [
        ReplyJob(tenants[n % len(tenants)], f"conv-{n}", f"msg-{n}", 1, NOW) for n in range(count)
    ]
    await enqueue(mongo_client, jobs, queued)
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


async def test_a_held_reply_job_is_due_only_once_woken_and_only_the_earliest_wakes(
    mongo_client: AsyncMongoClient[Document], scratch_database: AsyncDatabase[Document]
) -> None:
    jobs = MongoReplyJobs(database=scratch_database)
    queued = [
        ReplyJob("tenant-a", "c1", "m1", 1, NOW),
        ReplyJob("tenant-a", "c1", "m2", 2, NOW),
        ReplyJob("tenant-a", "c1", "m3", 3, NOW),
        ReplyJob("tenant-b", "c1", "m4", 2, NOW),  # another tenant's conversation of that id
    ]
    for job in queued:  # one call each, as separate webhooks' messages: all due at first
        await enqueue(mongo_client, jobs, [job])
    claimed = await jobs.claim_many(
        await jobs.due(now=NOW, limit=10), owner="one", now=NOW, lease=LEASE
    )
    by_message = {job.message_id: job for job in claimed}
    later = NOW + dt.timedelta(seconds=1)
    for message_id in ("m3", "m2", "m4"):
        await jobs.hold(by_message[message_id], until=NOW + LEASE)
    # Held: none due (m1 is leased); the hold was no attempt.
    assert await jobs.due(now=later, limit=10) == []
    stored = {d["message_id"]: d async for d in scratch_database["reply_jobs"].find({})}
    assert {m: stored[m]["attempts"] for m in ("m2", "m3", "m4")} == {"m2": 0, "m3": 0, "m4": 0}

    # Waking tenant-a's c1 makes its earliest held job due, not the one behind it, not the
    # other tenant's, and not the leased m1 (whose due time is its lease).
    await jobs.wake_next([("tenant-a", "c1"), ("tenant-a", "c9")], now=later)
    [woken] = await jobs.due(now=later, limit=10)
    assert woken.id == by_message["m2"].id
    [again] = await jobs.claim_many([woken], owner="two", now=later, lease=LEASE)
    assert again.attempts == 1
    stored = {d["message_id"]: d async for d in scratch_database["reply_jobs"].find({})}
    assert "held" not in stored["m2"]  # claimed: a wake no longer touches it
    assert stored["m1"]["due_time"] == NOW + LEASE
    await jobs.wake_next([("tenant-a", "c1")], now=later)
    [third] = await jobs.due(now=later, limit=10)
    assert third.id == by_message["m3"].id
    m2 = await scratch_database["reply_jobs"].find_one({"message_id": "m2"})
    assert m2 is not None
    assert (m2["status"], m2["due_time"]) == ("running", later + LEASE)  # its lease untouched

    # A wake lost, a held job is due at its ``until`` anyway.
    assert {d.id for d in await jobs.due(now=NOW + LEASE, limit=10)} == {
        by_message[m].id for m in ("m1", "m3", "m4")
    }


async def test_reply_jobs_queued_together_are_held_behind_the_first_of_their_conversation(
    mongo_client: AsyncMongoClient[Document], scratch_database: AsyncDatabase[Document]
) -> None:
    jobs = MongoReplyJobs(database=scratch_database)
    queued = [
        ReplyJob("tenant-a", "c1", "m2", 8, NOW),
        ReplyJob("tenant-a", "c1", "m1", 7, NOW),
        ReplyJob("tenant-a", "c2", "m3", 9, NOW),
        ReplyJob("tenant-b", "c1", "m4", 9, NOW),
    ]
    await enqueue(mongo_client, jobs, queued)
    stored = {d["_id"]: d["message_id"] async for d in scratch_database["reply_jobs"].find({})}
    due = await jobs.due(now=NOW, limit=10)
    assert sorted(stored[d.id] for d in due) == ["m1", "m3", "m4"]  # m2 waits behind m1
    m2 = await scratch_database["reply_jobs"].find_one({"message_id": "m2"})
    assert m2 is not None
    assert (m2["held"], m2["due_time"]) == (True, NOW + REPLY_HOLD_AT_MOST)
    [first] = await jobs.claim_many(
        [d for d in due if stored[d.id] == "m1"], owner="one", now=NOW, lease=LEASE
    )
    await jobs.wake_next([("tenant-a", "c1")], now=NOW)
    assert sorted(stored[d.id] for d in await jobs.due(now=NOW, limit=10)) == ["m2", "m3", "m4"]
    assert first.message_id == "m1"


class ReplyJobReads(monitoring.CommandListener):
    """The filters of the finds on the reply queue."""

    def __init__(self) -> None:
        self.filters: list[Document] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find" and event.command["find"] == REPLY_JOBS:
            self.filters.append(event.command["filter"])

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None: ...

    def failed(self, event: monitoring.CommandFailedEvent) -> None: ...


async def test_the_reply_queues_reads_of_a_conversations_jobs_use_its_index(
    stack: Endpoints, scratch_database: AsyncDatabase[Document]
) -> None:
    """A read of the held or earlier jobs of a conversation runs after every reply stored: on
    the embedded store a filter it cannot serve from the conversation index reads the whole
    queue (0.5 s among 16,000 jobs)."""
    reads = ReplyJobReads()
    client: AsyncMongoClient[Document] = AsyncMongoClient(
        stack.mongodb_uri, tz_aware=True, event_listeners=[reads]
    )
    try:
        database = client[scratch_database.name]
        jobs = MongoReplyJobs(database=database)
        await enqueue(client, jobs, [ReplyJob("tenant-a", "c1", f"m{n}", n, NOW) for n in (1, 2)])
        await jobs.earlier_waiting([Position("tenant-a", "c1", 2)])
        await jobs.wake_next([("tenant-a", "c1"), ("tenant-b", "c2")], now=NOW)
        assert len(reads.filters) == 3
        for read in reads.filters:
            explained = await database.command("explain", {"find": REPLY_JOBS, "filter": read})
            plan = str(explained["queryPlanner"]["winningPlan"])
            assert "'indexName': 'conversation_sequence'" in plan, (read, plan)
    finally:
        await client.close()


async def test_items_queued_leased_are_not_due_and_renew_only_under_the_lease_handed_over(
    mongo_client: AsyncMongoClient[Document], scratch_database: AsyncDatabase[Document]
) -> None:
    """A reply job and a delivery queued leased (handed to the queuing process's worker) are
    not due until the lease lapses; the lease renews while it is the one handed over, and not
    once it lapsed and the item was claimed again, even by the same owner (which the renewal
    of the stale copy must not take from the claim: a delivery would be sent twice)."""
    jobs = MongoReplyJobs(database=scratch_database)
    deliveries = MongoDeliveries(database=scratch_database)
    leasing = Leasing(owner="one", until=NOW + LEASE, slots=2)
    message = common_pb2.Message(id="out-1", conversation_id="c1", sequence=2)

    async def work(tx: object) -> tuple[list[ClaimedReplyJob], list[Delivery]]:
        handed_jobs = await jobs.enqueue_many(
            [
                ReplyJob("tenant-a", "c1", "in-1", 1, NOW),
                ReplyJob("tenant-a", "c1", "in-2", 2, NOW),
            ],
            tx=tx,  # type: ignore[arg-type]
            leasing=leasing,
        )
        handed_deliveries = await deliveries.enqueue_many(
            [Outgoing("tenant-a", [message], "user-1", "", NOW)],
            tx=tx,  # type: ignore[arg-type]
            leasing=leasing,
        )
        return handed_jobs, handed_deliveries

    [job], [delivery] = await Transactions(client=mongo_client).run(work)  # type: ignore[arg-type]
    # The second job waits behind the first: held, not leased.
    assert (job.message_id, job.owner, job.attempts) == ("in-1", "one", 1)
    assert (delivery.state, delivery.owner, delivery.due_time) == (SENDING, "one", NOW + LEASE)
    assert await jobs.due(now=NOW, limit=10) == []
    assert await deliveries.due(now=NOW, limit=10) == []

    assert await jobs.renew(job, until=NOW + 2 * LEASE)
    assert await deliveries.renew(delivery, until=NOW + 2 * LEASE)
    renewed = dataclasses.replace(delivery, due_time=NOW + 2 * LEASE)

    # The leases lapse; the same owner claims both again from the queue.
    later = NOW + 3 * LEASE
    [job_due] = [d for d in await jobs.due(now=later, limit=10) if d.id == job.id]
    [reclaimed_job] = await jobs.claim_many([job_due], owner="one", now=later, lease=LEASE)
    [delivery_due] = await deliveries.due(now=later, limit=10)
    [reclaimed] = await deliveries.claim_many([delivery_due], owner="one", now=later, lease=LEASE)
    assert not await jobs.renew(job, until=later + LEASE)
    assert not await deliveries.renew(renewed, until=later + LEASE)
    # The claims' own leases renew (to the same time, too: it is still theirs).
    assert await jobs.renew(reclaimed_job, until=later + LEASE)
    assert await deliveries.renew(reclaimed, until=later + LEASE)
    assert await deliveries.renew(reclaimed, until=later + 2 * LEASE)


class JobRemovals(monitoring.CommandListener):
    """The delete statements sent to the reply queue."""

    def __init__(self) -> None:
        self.statements: list[list[Document]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "delete" and event.command.get("delete") == REPLY_JOBS:
            self.statements.append(list(event.command["deletes"]))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None: ...

    def failed(self, event: monitoring.CommandFailedEvent) -> None: ...


async def test_completing_claimed_jobs_removes_only_those_still_leased_to_the_claim(
    stack: Endpoints, scratch_database: AsyncDatabase[Document]
) -> None:
    """Jobs of one tenant, claim and attempt go in one statement; a job whose lease lapsed and
    was claimed again (by the same process: same owner, another attempt) is not removed by
    the old claim's copy, even beside current jobs of that claim, and the call says a lease
    was lost."""
    removals = JobRemovals()
    client: AsyncMongoClient[Document] = AsyncMongoClient(
        stack.mongodb_uri, tz_aware=True, event_listeners=[removals]
    )
    try:
        jobs = MongoReplyJobs(database=client[scratch_database.name])
        transactions = Transactions(client=client)

        async def complete(which: list[ClaimedReplyJob]) -> bool:
            async def work(tx: AsyncClientSession) -> bool:
                return await jobs.complete_many(which, tx=tx)

            return await transactions.run(work)

        due = await queued_jobs(client, jobs, ["tenant-a"], 5)
        claimed = await jobs.claim_many(due, owner="one", now=NOW, lease=LEASE)
        assert [job.attempts for job in claimed] == [1] * 5

        assert await complete(claimed[:3])
        assert [len(statement) for statement in removals.statements] == [1]  # one for the 3
        assert await remaining(client[scratch_database.name]) == {claimed[3].id, claimed[4].id}

        # claimed[4]'s lease lapses and the same process claims it again (its second attempt).
        later = NOW + LEASE + dt.timedelta(seconds=1)
        [again] = await jobs.claim_many(
            [d for d in due if d.id == claimed[4].id], owner="one", now=later, lease=LEASE
        )
        assert (again.owner, again.attempts) == ("one", 2)
        # The old copy beside a current job of its tenant, owner and attempt: one statement
        # names both; only the current one goes, and the lost lease is reported.
        assert not await complete([claimed[3], claimed[4]])
        assert len(removals.statements[-1]) == 1
        assert await remaining(client[scratch_database.name]) == {claimed[4].id}
        assert await complete([again])
        assert await remaining(client[scratch_database.name]) == set()
    finally:
        await client.close()


async def remaining(database: AsyncDatabase[Document]) -> set[str]:
    return {document["_id"] async for document in database[REPLY_JOBS].find({}, {"_id": 1})}
