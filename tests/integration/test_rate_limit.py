"""Rate limits on real Redis: the GCRA script directly, then through a real server."""

from __future__ import annotations

import asyncio
import math
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf import wrappers_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from devstack.stack import EmbeddedStack, Endpoints
from devstack.tokens import mint_dev_token
from server.domain.limits import Limit, limit_key
from server.repositories.rate_limits import RedisRateLimiter
from server.repositories.redis_client import RedisClient
from tests.support.probe import ECHO, unary_call
from tests.support.servers import RunningServer, tenants_file

StartServer = Callable[..., Awaitable[RunningServer]]
SECRET = "rate-limit-test-secret-long-enough-for-hs256"


def unique(prefix: str) -> str:
    # Unique names keep tests independent, also on a shared Redis (CI runs them on the machine's).
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.mark.redis
async def test_burst_then_refill(redis_client: RedisClient) -> None:
    limiter = RedisRateLimiter(client=redis_client)
    # One request every 2 s sustained: slow enough that no refill happens between the calls
    # below, even on a loaded machine.
    limit = Limit(limit_key(unique("t"), "t"), per_second=0.5, burst=3, subject="tenant")
    results = [await limiter.check((limit,)) for _ in range(4)]
    assert [r.allowed for r in results] == [True, True, True, False]
    refused = results[3]
    assert refused.refused == (limit,)
    assert 0.0 < refused.retry_after_seconds <= 2.0
    await asyncio.sleep(refused.retry_after_seconds + 0.05)
    assert (await limiter.check((limit,))).allowed  # one request's worth refilled
    assert not (await limiter.check((limit,))).allowed  # and only one


@pytest.mark.redis
async def test_retry_after_is_accurate(redis_client: RedisClient) -> None:
    limiter = RedisRateLimiter(client=redis_client)
    limit = Limit(limit_key(unique("t"), "t"), per_second=1, burst=1, subject="tenant")
    assert (await limiter.check((limit,))).allowed
    refused = await limiter.check((limit,))
    # Measured after the refusal came back, so started + wait is at or after the allowed time.
    started = time.monotonic()
    assert not refused.allowed
    assert 0.8 < refused.retry_after_seconds <= 1.0
    await asyncio.sleep(max(0.0, refused.retry_after_seconds - 0.5))
    assert not (await limiter.check((limit,))).allowed  # half a second early: still refused
    await asyncio.sleep(max(0.0, started + refused.retry_after_seconds - time.monotonic()))
    assert (await limiter.check((limit,))).allowed  # on time: admitted


@pytest.mark.redis
async def test_a_refused_request_charges_no_limit(redis_client: RedisClient) -> None:
    limiter = RedisRateLimiter(client=redis_client)
    tenant = unique("t")
    # A burst of 100 that practically never refills, so only charges change it.
    roomy = Limit(limit_key(tenant, "t"), per_second=0.001, burst=100, subject="tenant")
    tight = Limit(limit_key(tenant, "u", "alice"), per_second=1, burst=1, subject="user:alice")
    assert (await limiter.check((roomy, tight))).allowed
    for _ in range(5):
        decision = await limiter.check((roomy, tight))
        assert not decision.allowed
        assert decision.refused == (tight,)
    # Only the first request was charged to the roomy limit: 99 more fit at once.
    other = Limit(limit_key(tenant, "u", "bob"), per_second=0.001, burst=200, subject="user:bob")
    assert [(await limiter.check((roomy, other))).allowed for _ in range(99)] == [True] * 99
    assert not (await limiter.check((roomy, other))).allowed


@pytest.mark.redis
async def test_keys_are_prefixed_by_tenant_and_expire(redis_client: RedisClient) -> None:
    limiter = RedisRateLimiter(client=redis_client)
    tenant = unique("t")
    limit = Limit(limit_key(tenant, "m", "SearchMessages"), 10, 5, "method:SearchMessages")
    assert (await limiter.check((limit,))).allowed
    keys = [k.decode() async for k in redis_client.scan_iter(match=f"rl:{{{tenant}}}:*")]
    assert keys == [f"rl:{{{tenant}}}:m:SearchMessages"]
    assert 0 < await redis_client.pttl(keys[0]) <= 1000


def token(
    tenant: str, subject: str = "user-1", scopes: tuple[str, ...] = ("chat:read", "chat:write")
) -> tuple[tuple[str, str], ...]:
    jwt_token = mint_dev_token(secret=SECRET, tenant_id=tenant, subject=subject, scopes=scopes)
    return (("authorization", f"Bearer {jwt_token}"),)


async def start_limited(
    start_server: StartServer, tmp_path: Path, tenant: str, quotas: str, **overrides: str
) -> RunningServer:
    return await start_server(
        CHAT_JWT_SECRET=SECRET,
        CHAT_JWT_ISSUER="chat-service-dev",
        CHAT_JWT_AUDIENCE="chat-service",
        CHAT_TENANTS_FILE=tenants_file(tmp_path, f"tenants:\n  - id: {tenant}\n    {quotas}\n"),
        **overrides,
    )


async def echo(server: RunningServer, metadata: tuple[tuple[str, str], ...]) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(server.target) as channel:
        try:
            await unary_call(channel, ECHO)(
                wrappers_pb2.StringValue(), metadata=metadata, timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.redis
async def test_the_tenant_quota_from_the_tenants_file(
    start_server: StartServer, tmp_path: Path
) -> None:
    tenant = unique("q")
    server = await start_limited(
        start_server, tmp_path, tenant, "quotas: {requests_per_second: 0.5, burst: 3}"
    )
    assert [await echo(server, token(tenant, f"u{i}")) for i in range(3)] == [
        grpc.StatusCode.OK
    ] * 3
    async with grpc.aio.insecure_channel(server.target) as channel:
        call = unary_call(channel, ECHO)(wrappers_pb2.StringValue(), metadata=token(tenant, "u9"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
    exc = caught.value
    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(exc)
    assert status is not None
    quota, retry, info = (
        error_details_pb2.QuotaFailure(),
        error_details_pb2.RetryInfo(),
        error_details_pb2.ErrorInfo(),
    )
    for detail in status.details:
        for message in (quota, retry, info):
            if detail.Is(message.DESCRIPTOR):
                detail.Unpack(message)
    assert info.reason == "RATE_LIMITED"
    assert [v.subject for v in quota.violations] == ["tenant"]
    wait = retry.retry_delay.ToTimedelta().total_seconds()
    assert 0.0 < wait <= 2.0
    assert ("retry-after", str(math.ceil(wait))) in tuple(exc.trailing_metadata() or ())
    await asyncio.sleep(wait + 0.05)
    assert await echo(server, token(tenant, "u10")) == grpc.StatusCode.OK


@pytest.mark.redis
async def test_per_user_and_per_method_limits(start_server: StartServer, tmp_path: Path) -> None:
    tenant = unique("u")
    server = await start_limited(
        start_server,
        tmp_path,
        tenant,
        "quotas: {requests_per_second: 1000, burst: 1000}",
        CHAT_RATE_LIMIT_USER_RPS="0.05",
        CHAT_RATE_LIMIT_USER_BURST="2",
        CHAT_RATE_LIMIT_METHODS="Echo=0.05:4",
    )
    alice, bob, carol = token(tenant, "alice"), token(tenant, "bob"), token(tenant, "carol")
    ok, limited = grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED
    # Per user: alice's third call is refused while bob still has his own allowance.
    assert [await echo(server, alice) for _ in range(3)] == [ok, ok, limited]
    assert await echo(server, bob) == ok
    # Per method: Echo allows 4 calls in a burst across the tenant; 3 are used (alice's refused
    # call charged nothing), so bob's second call passes and carol's is refused by the method.
    assert await echo(server, bob) == ok
    assert await echo(server, carol) == limited


@pytest.mark.redis
async def test_the_bridge_identity_has_no_per_user_limit(
    start_server: StartServer, tmp_path: Path
) -> None:
    tenant = unique("i")
    server = await start_limited(
        start_server,
        tmp_path,
        tenant,
        "quotas: {requests_per_second: 1000, burst: 1000}",
        CHAT_RATE_LIMIT_USER_RPS="0.05",
        CHAT_RATE_LIMIT_USER_BURST="1",
    )
    bridge = token(tenant, "webhook-bridge", scopes=("chat:read", "chat:ingest"))
    assert [await echo(server, bridge) for _ in range(3)] == [grpc.StatusCode.OK] * 3
    person = token(tenant, "alice")
    assert [await echo(server, person) for _ in range(2)] == [
        grpc.StatusCode.OK,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ]


@pytest.mark.redis
async def test_tenants_do_not_share_limits(start_server: StartServer, tmp_path: Path) -> None:
    first, second = unique("a"), unique("b")
    server = await start_server(
        CHAT_JWT_SECRET=SECRET,
        CHAT_JWT_ISSUER="chat-service-dev",
        CHAT_JWT_AUDIENCE="chat-service",
        CHAT_TENANTS_FILE=tenants_file(
            tmp_path,
            f"tenants:\n  - id: {first}\n    quotas: {{requests_per_second: 1, burst: 1}}\n"
            f"  - id: {second}\n    quotas: {{requests_per_second: 1, burst: 1}}\n",
        ),
    )
    assert await echo(server, token(first)) == grpc.StatusCode.OK
    assert await echo(server, token(first)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await echo(server, token(second)) == grpc.StatusCode.OK


@pytest.fixture
def own_redis(stack: Endpoints, tmp_path: Path) -> EmbeddedStack:
    """A Redis of this test's own, which it may stop (the others come from the session)."""
    return EmbeddedStack(
        data_dir=tmp_path / "own",
        environ={
            "CHAT_MONGODB_URI": stack.mongodb_uri,
            "CHAT_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
        },
    )


async def test_fail_open_when_redis_is_down(
    start_server: StartServer, tmp_path: Path, own_redis: EmbeddedStack
) -> None:
    endpoints = own_redis.start()
    tenant = unique("f")
    try:
        server = await start_limited(
            start_server,
            tmp_path,
            tenant,
            "quotas: {requests_per_second: 1, burst: 1}",
            CHAT_REDIS_URL=endpoints.redis_url,
        )
        assert await echo(server, token(tenant)) == grpc.StatusCode.OK
        assert await echo(server, token(tenant)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        own_redis.stop()
    # Redis is gone: calls pass unchecked, and are counted.
    assert [await echo(server, token(tenant)) for _ in range(3)] == [grpc.StatusCode.OK] * 3
    url = f"http://127.0.0.1:{server.server.metrics_port}/metrics"
    metrics = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
    assert b"chat_rate_limit_fail_open_total 3.0" in metrics


async def test_fail_closed_when_configured(start_server: StartServer, tmp_path: Path) -> None:
    tenant = unique("c")
    server = await start_limited(
        start_server,
        tmp_path,
        tenant,
        "quotas: {requests_per_second: 5, burst: 5}",
        CHAT_REDIS_URL="redis://127.0.0.1:1/0",
        CHAT_RATE_LIMIT_FAIL_OPEN="false",
    )
    assert await echo(server, token(tenant)) == grpc.StatusCode.UNAVAILABLE
