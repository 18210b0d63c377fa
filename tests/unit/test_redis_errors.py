"""Redis's failures as the callers see them: a StoreError to the code that can do without
Redis, UNAVAILABLE (never INTERNAL, never the driver's text) to a client nothing shielded."""

from __future__ import annotations

import grpc
import pytest
from redis.exceptions import (
    ClusterDownError,
    CrossSlotTransactionError,
    RedisClusterUnreachableError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from server.domain.errors import DomainError, StoreError, StoreUnavailableError
from server.interceptors.error_boundary import to_status
from server.repositories.redis_errors import RedisUnavailableError, translate_redis_errors


@translate_redis_errors
async def stalls() -> None:
    raise RedisTimeoutError("Timeout reading from 127.0.0.1:6379")


@translate_redis_errors
async def refuses() -> None:
    raise ResponseError("NOSCRIPT No matching script")


async def test_a_timeout_is_unavailable_to_the_client_and_a_store_outage_to_the_code() -> None:
    with pytest.raises(RedisUnavailableError) as caught:
        await stalls()
    error = caught.value
    assert isinstance(error, StoreUnavailableError)
    assert isinstance(error, DomainError)
    status, _ = to_status(error)
    assert status.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert "127.0.0.1" not in status.message
    assert "Timeout reading" in str(error)  # the detail stays for the log
    assert "Timeout reading" in repr(error)


async def test_an_error_redis_answered_with_stays_a_store_error() -> None:
    with pytest.raises(StoreError) as caught:
        await refuses()
    assert not isinstance(caught.value, DomainError)


@pytest.mark.parametrize(
    "failure",
    [
        ClusterDownError("CLUSTERDOWN The cluster is down"),
        TryAgainError("TRYAGAIN Multiple keys request during rehashing of slot"),
        RedisClusterUnreachableError("no node of the cluster answered"),
        SlotNotCoveredError("slot 42 is not covered by the cluster"),
    ],
)
async def test_a_cluster_that_cannot_serve_the_slot_now_is_unavailable(failure: Exception) -> None:
    @translate_redis_errors
    async def call() -> None:
        raise failure

    with pytest.raises(RedisUnavailableError) as caught:
        await call()
    status, _ = to_status(caught.value)
    assert status.code == grpc.StatusCode.UNAVAILABLE.value[0]


async def test_keys_of_one_call_in_several_slots_are_a_store_error_not_an_outage() -> None:
    @translate_redis_errors
    async def call() -> None:
        raise CrossSlotTransactionError("All keys involved in a transaction must map to one slot")

    with pytest.raises(StoreError) as caught:
        await call()
    assert not isinstance(caught.value, StoreUnavailableError)
