"""Signing keys from a real JWKS endpoint: cached, refetched on unknown kid at most once a
minute, and kept when the endpoint fails; verified tokens remembered only while their key
and their expiry allow."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import pytest

from server.auth.jwks import JwksKeySource
from server.auth.tokens import TokenVerifier
from server.domain.errors import Unauthenticated, Unavailable
from server.settings import JwtSettings
from tests.support.keys import AUDIENCE, ISSUER, JwksServer, KeyPair


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


def rs256_settings(idp: JwksServer) -> JwtSettings:
    return JwtSettings(
        algorithms=("RS256",),
        jwks_url=idp.url,
        public_key_file=None,
        secret=None,
        issuer=ISSUER,
        audience=AUDIENCE,
        leeway_seconds=0,
    )


async def test_a_verified_token_is_remembered_until_its_key_is_withdrawn(
    idp: JwksServer, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    source = JwksKeySource(url=idp.url, http=http, clock=clock, refresh_seconds=600)
    verifier = TokenVerifier(settings=rs256_settings(idp), jwks=source)
    decoded: list[str] = []
    decode = jwt.decode

    def counting(token: str, *args: Any, **kwargs: Any) -> Any:
        decoded.append(token)
        return decode(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    token = idp.keys[0].sign()
    for _ in range(3):
        principal = await verifier.verify(token)
        assert (principal.subject, principal.tenant_id) == ("user-1", "acme")
    assert len(decoded) == 1  # checked once, then remembered
    other = idp.keys[0].sign(sub="user-2")
    assert (await verifier.verify(other)).subject == "user-2"  # another token: checked
    assert len(decoded) == 2

    idp.keys[:] = [KeyPair.rsa("k3")]  # the IdP withdraws k1
    clock.now += 601
    with pytest.raises(Unauthenticated) as caught:
        await verifier.verify(token)
    assert caught.value.reason == "TOKEN_KEY_UNKNOWN"


async def test_a_remembered_token_still_expires(
    idp: JwksServer, http: aiohttp.ClientSession
) -> None:
    source = JwksKeySource(url=idp.url, http=http, clock=Clock())
    verifier = TokenVerifier(settings=rs256_settings(idp), jwks=source)
    # PyJWT reads the real clock: two to three seconds, so the first checks finish in time.
    expires = int(time.time()) + 3
    token = idp.keys[0].sign(exp=expires)
    await verifier.verify(token)
    await verifier.verify(token)  # remembered
    await asyncio.sleep(max(0.0, expires + 0.05 - time.time()))  # until the token has expired
    with pytest.raises(Unauthenticated) as caught:
        await verifier.verify(token)
    assert caught.value.reason == "TOKEN_EXPIRED"


async def test_a_remembered_token_is_checked_again_when_its_kid_names_a_new_key(
    idp: JwksServer, http: aiohttp.ClientSession
) -> None:
    clock = Clock()
    source = JwksKeySource(url=idp.url, http=http, clock=clock, refresh_seconds=600)
    verifier = TokenVerifier(settings=rs256_settings(idp), jwks=source)
    token = idp.keys[0].sign()
    await verifier.verify(token)
    idp.keys[:] = [KeyPair.rsa("k1")]  # the same kid, new key material
    clock.now += 601
    with pytest.raises(Unauthenticated) as caught:
        await verifier.verify(token)
    assert caught.value.reason == "TOKEN_SIGNATURE_INVALID"
