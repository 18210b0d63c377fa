"""IdempotentRequests: a request id answers only the request it was first used for."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from google.protobuf import wrappers_pb2

from chat.v1 import chat_service_pb2
from server.domain.errors import FailedPrecondition
from server.domain.idempotency import RecordedResponse
from server.repositories.secrets import SecretBox
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
    # Enough keys that a map's encoding order differs unless it is made deterministic.
    pairs = [(f"key-{n}", str(n)) for n in range(30)]
    one = chat_service_pb2.SendMessageRequest(user_id="u", metadata=dict(pairs))
    two = chat_service_pb2.SendMessageRequest(user_id="u", metadata=dict(reversed(pairs)))
    other = chat_service_pb2.SendMessageRequest(user_id="u", metadata=dict(pairs) | {"key-0": "x"})
    assert one.SerializeToString() != two.SerializeToString()  # what the fingerprint must absorb
    assert fingerprint_of(one) == fingerprint_of(two)
    assert fingerprint_of(one) != fingerprint_of(other)


def test_a_tenants_fingerprint_is_keyed_not_a_plain_hash_of_its_secrets() -> None:
    request = b"tenant with verify_token=guessable"
    box = SecretBox(b"k" * 32)
    other = SecretBox(b"j" * 32)
    assert box.fingerprint(request) == box.fingerprint(request)
    assert box.fingerprint(request) != other.fingerprint(request)
    assert box.fingerprint(request) != hashlib.sha256(request).hexdigest()
