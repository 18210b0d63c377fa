"""IdempotentRequests: a request id answers only the request it was first used for."""

from __future__ import annotations

import datetime as dt

import pytest
from google.protobuf import wrappers_pb2

from chat.v1 import chat_service_pb2
from server.domain.errors import FailedPrecondition
from server.domain.idempotency import RecordedResponse
from server.services.idempotency import IdempotentRequests, RequestKey, fingerprint_of
from tests.support.memory_db import Database
from tests.support.memory_stores import MemoryIdempotencyStore

NOW = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)


def _key(request: wrappers_pb2.StringValue, request_id: str = "r-1") -> RequestKey:
    return RequestKey("acme", "Op", request_id, fingerprint_of(request))


async def _run(
    requests: IdempotentRequests, request: wrappers_pb2.StringValue, ran: list[str]
) -> wrappers_pb2.StringValue:
    key = _key(request)

    async def work() -> wrappers_pb2.StringValue:
        ran.append(request.value)
        response = wrappers_pb2.StringValue(value=f"did {request.value}")
        await requests.record(key, response, now=NOW, tx=None)
        return response

    return await requests.once(key, wrappers_pb2.StringValue.FromString, work)


async def test_the_same_request_is_answered_from_the_record() -> None:
    requests = IdempotentRequests(store=MemoryIdempotencyStore(Database()))
    ran: list[str] = []
    first = await _run(requests, wrappers_pb2.StringValue(value="a"), ran)
    again = await _run(requests, wrappers_pb2.StringValue(value="a"), ran)
    assert again == first
    assert ran == ["a"]


async def test_another_request_under_the_same_id_is_refused() -> None:
    requests = IdempotentRequests(store=MemoryIdempotencyStore(Database()))
    ran: list[str] = []
    await _run(requests, wrappers_pb2.StringValue(value="a"), ran)
    with pytest.raises(FailedPrecondition) as refused:
        await _run(requests, wrappers_pb2.StringValue(value="b"), ran)
    assert refused.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert ran == ["a"]


async def test_a_record_from_before_fingerprints_still_answers_its_retry() -> None:
    store = MemoryIdempotencyStore(Database())
    legacy = wrappers_pb2.StringValue(value="did a")
    await store.put(
        "acme", "Op", "r-1", RecordedResponse(legacy.SerializeToString(), ""), now=NOW, tx=None
    )
    ran: list[str] = []
    answer = await _run(IdempotentRequests(store=store), wrappers_pb2.StringValue(value="a"), ran)
    assert answer == legacy
    assert ran == []


def test_the_fingerprint_ignores_map_order_and_sees_every_field() -> None:
    one = chat_service_pb2.SendMessageRequest(user_id="u", metadata={"a": "1", "b": "2"})
    two = chat_service_pb2.SendMessageRequest(user_id="u", metadata={"b": "2", "a": "1"})
    other = chat_service_pb2.SendMessageRequest(user_id="u", metadata={"a": "1", "b": "3"})
    assert fingerprint_of(one) == fingerprint_of(two)
    assert fingerprint_of(one) != fingerprint_of(other)
