"""The check that every command on a tenant's collection names its tenant (the integration
tests run under it): what it keeps and what it lets pass."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.support.mongo_commands import TenantFilterCheck


@dataclass
class Started:
    """What the listener reads of pymongo's CommandStartedEvent."""

    command_name: str
    command: dict[str, Any] = field(default_factory=dict)


def check() -> TenantFilterCheck:
    return TenantFilterCheck(caller=lambda: "server/repositories/x.py:1 (f)")


def sent(listener: TenantFilterCheck, name: str, **command: Any) -> list[str]:
    listener.started(Started(name, command))  # type: ignore[arg-type]  # duck-typed event
    return [item.shape for item in listener.take()]


def test_a_filter_by_id_alone_is_kept_and_one_with_the_tenant_passes() -> None:
    listener = check()
    assert sent(listener, "find", find="messages", filter={"_id": "m1"}) == ["filter {_id}"]
    assert sent(listener, "find", find="messages", filter={"_id": "m1", "tenant_id": "t"}) == []
    assert sent(listener, "find", find="outbox", filter={"_id": "e1"}) == []  # not a tenant's


def test_every_statement_of_a_bulk_write_is_checked() -> None:
    listener = check()
    updates = [
        {"q": {"_id": "c1", "tenant_id": "t"}, "u": {"$inc": {"n": 1}}},
        {"q": {"_id": "c2"}, "u": {"$inc": {"n": 1}}},
    ]
    assert sent(listener, "update", update="conversations", updates=updates) == ["filter {_id}"]
    deletes = [{"q": {"_id": "j1", "owner": "o"}, "limit": 1}]
    assert sent(listener, "delete", delete="reply_jobs", deletes=deletes) == ["filter {_id, owner}"]


def test_inserted_documents_must_name_the_tenant_where_gridfs_keeps_it_too() -> None:
    listener = check()
    documents = [{"_id": "a", "tenant_id": "t"}, {"_id": "b"}]
    assert sent(listener, "insert", insert="alerts", documents=documents) == ["document {_id}"]
    media = [{"_id": 1, "metadata": {"tenant_id": "t"}}, {"_id": 2, "metadata": {}}]
    assert sent(listener, "insert", insert="media.files", documents=media) == [
        "document {_id, metadata}"
    ]


def test_an_or_names_the_tenant_only_when_every_branch_does() -> None:
    listener = check()
    some = {"$or": [{"tenant_id": "t", "a": 1}, {"b": 2}]}
    every = {"$or": [{"tenant_id": "t", "a": 1}, {"tenant_id": "t", "b": 2}]}
    within_and = {"$and": [{"tenant_id": "t"}, {"$or": [{"a": 1}, {"b": 2}]}]}
    assert sent(listener, "find", find="deliveries", filter=some) == ["filter {$or}"]
    assert sent(listener, "find", find="deliveries", filter=every) == []
    assert sent(listener, "find", find="deliveries", filter=within_and) == []


def test_an_aggregate_is_judged_by_its_first_match() -> None:
    listener = check()
    scoped = [{"$match": {"tenant_id": "t"}}, {"$group": {"_id": "$channel"}}]
    unscoped = [{"$group": {"_id": "$tenant_id"}}]
    assert sent(listener, "aggregate", aggregate="analytics_minutes", pipeline=scoped) == []
    assert sent(listener, "aggregate", aggregate="analytics_minutes", pipeline=unscoped) == [
        "filter {}"
    ]


def test_only_a_read_may_be_marked_as_spanning_tenants() -> None:
    listener = check()
    comment = "cross-tenant: a queue's poll for due work"
    poll = {"due_time": {"$lte": 1}}
    assert sent(listener, "find", find="deliveries", filter=poll, comment=comment) == []
    updates = [{"q": {"_id": "d1"}, "u": {"$set": {"state": "x"}}}]
    assert sent(listener, "update", update="deliveries", updates=updates, comment=comment) == [
        f"update marked {comment!r}"
    ]


def test_a_command_sent_by_a_test_itself_is_not_the_service_s() -> None:
    listener = TenantFilterCheck(caller=lambda: None)
    assert sent(listener, "find", find="messages", filter={}) == []


def test_only_equality_or_in_names_a_tenant() -> None:
    listener = check()
    for names in ({"tenant_id": "t"}, {"tenant_id": {"$in": ["t", "u"]}}):
        assert sent(listener, "find", find="messages", filter={"_id": "m", **names}) == []
    for other in (
        {"tenant_id": {"$ne": "t"}},
        {"tenant_id": {"$nin": ["t"]}},
        {"tenant_id": {"$exists": True}},
        {"tenant_id": {"$in": []}},
        {"tenant_id": {"$in": ["t"], "$ne": "u"}},
    ):
        assert sent(listener, "find", find="messages", filter={"_id": "m", **other}) == [
            "filter {_id, tenant_id}"
        ], other


def test_a_join_into_a_tenant_collection_is_kept() -> None:
    listener = check()
    pipeline = [
        {"$match": {"tenant_id": "t"}},
        {"$lookup": {"from": "messages", "localField": "_id", "foreignField": "c", "as": "m"}},
    ]
    assert sent(listener, "aggregate", aggregate="conversations", pipeline=pipeline) == [
        "a join into messages"
    ]


def test_a_start_up_migration_is_marked_and_passes() -> None:
    listener = check()
    comment = "migration: documents of an older version get their tenant_id"
    updates = [{"q": {"_id": "acme", "tenant_id": {"$exists": False}}, "u": {}}]
    assert sent(listener, "update", update="audit_heads", updates=updates, comment=comment) == []
    assert sent(listener, "update", update="audit_heads", updates=updates) == [
        "filter {_id, tenant_id}"
    ]
