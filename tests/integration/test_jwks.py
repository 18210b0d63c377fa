"""Signing keys from a real JWKS endpoint: cached, refetched on unknown kid at most once a
minute, and kept when the endpoint fails."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from server.auth.jwks import JwksKeySource
from server.domain.errors import Unauthenticated, Unavailable
from tests.integration.keys import JwksServer, KeyPair


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def idp() -> AsyncIterator[JwksServer]:
    server = JwksServer(keys=[KeyPair.rsa("k1")])
    await server.start()
    yield server
    await server.stop()


async def test_keys_are_cached(idp: JwksServer, http: aiohttp.ClientSession) -> None:
    source = JwksKeySource(url=idp.url, http=http, clock=Clock())
    for _ in range(5):
        assert (await source.key("k1")).kid == "k1"
    assert idp.fetches == 1


async def test_unknown_kids_refetch_at_most_once_a_minute(
    idp: JwksServer, http: aiohttp.ClientSession
) -> None:
    clock = Clock()
    source = JwksKeySource(url=idp.url, http=http, clock=clock)
    await source.key("k1")
    for kid in ("forged-1", "forged-2", "forged-3"):
        with pytest.raises(Unauthenticated) as caught:
            await source.key(kid)
        assert caught.value.reason == "TOKEN_KEY_UNKNOWN"
    assert idp.fetches == 1  # fetched for k1 less than a minute ago: no refetch yet

    idp.keys.append(KeyPair.rsa("k2"))  # the IdP rotates in a new key
    clock.now += 61
    assert (await source.key("k2")).kid == "k2"
    assert idp.fetches == 2
    with pytest.raises(Unauthenticated):
        await source.key("forged-4")
    assert idp.fetches == 2


async def test_keys_are_refreshed_on_an_interval(
    idp: JwksServer, http: aiohttp.ClientSession
) -> None:
    clock = Clock()
    source = JwksKeySource(url=idp.url, http=http, clock=clock, refresh_seconds=600)
    await source.key("k1")
    idp.keys[:] = [KeyPair.rsa("k3")]  # k1 revoked
    clock.now += 601
    with pytest.raises(Unauthenticated):
        await source.key("k1")
    assert idp.fetches == 2


async def test_an_unreachable_idp(idp: JwksServer, http: aiohttp.ClientSession) -> None:
    clock = Clock()
    source = JwksKeySource(url=idp.url, http=http, clock=clock)
    await source.key("k1")
    await idp.stop()
    clock.now += 601
    # Known keys keep working while the IdP is down.
    assert (await source.key("k1")).kid == "k1"

    cold = JwksKeySource(url=idp.url, http=http, clock=clock)
    with pytest.raises(Unavailable) as caught:
        await cold.key("k1")
    assert caught.value.reason == "SIGNING_KEYS_UNAVAILABLE"


async def test_a_failed_cold_fetch_fails_fast_then_retries(
    idp: JwksServer, http: aiohttp.ClientSession
) -> None:
    clock = Clock()
    source = JwksKeySource(url=idp.url, http=http, clock=clock)
    idp.failing = True
    with pytest.raises(Unavailable):
        await source.key("k1")
    assert idp.fetches == 1
    idp.failing = False
    with pytest.raises(Unavailable):  # within the fail-fast window: the IdP is not asked
        await source.key("k1")
    assert idp.fetches == 1
    clock.now += 6
    assert (await source.key("k1")).kid == "k1"
    assert idp.fetches == 2
