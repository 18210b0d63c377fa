"""Fetches media a client names by URL, without becoming a way into the private network.

Every host name is resolved through a resolver that drops addresses which are not globally
routable (loopback, private, link-local, the cloud metadata address), so a name that
resolves to one cannot be used, nor can a redirect to one: redirects are followed here, each
hop checked, at most MAX_REDIRECTS of them. Bodies are read up to the size limit and no further.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from server.processors.media import MediaFetchError

MAX_REDIRECTS = 3
_CHUNK = 64 * 1024


def _refused(description: str) -> MediaFetchError:
    return MediaFetchError(description)


def _allowed(address: str, *, allow_private: bool) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    return allow_private or ip.is_global


class _NotPublicError(OSError):
    """A name resolved only to addresses that are not public."""


class _PublicOnlyResolver(AbstractResolver):
    def __init__(self, *, allow_private: bool) -> None:
        self._inner = DefaultResolver()
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if _allowed(r["host"], allow_private=self._allow_private)]
        if not allowed:
            raise _NotPublicError(f"{host} resolves to no public address")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


class HttpMediaFetcher:
    """One pooled HTTP client per process, created on first use."""

    def __init__(self, *, timeout_seconds: float, allow_private: bool = False) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._allow_private = allow_private
        self._session: aiohttp.ClientSession | None = None

    async def fetch(
        self, url: str, *, max_bytes: int, headers: Mapping[str, str] | None = None
    ) -> bytes:
        """The body at ``url``; ``headers`` (a platform's bearer token) go to that host only,
        never along a redirect to another."""
        session = self._client()
        origin = _origin(url)
        for _ in range(MAX_REDIRECTS + 1):
            self._check_host(url)
            # Credentials go to the origin they were given for, never along a redirect.
            sent = dict(headers or {}) if _origin(url) == origin else {}
            try:
                async with session.get(url, allow_redirects=False, headers=sent) as response:
                    if response.status in (301, 302, 303, 307, 308):
                        location = response.headers.get("Location", "")
                        url = urljoin(url, location)
                        continue
                    if response.status != 200:
                        raise _refused(f"the server answered HTTP {response.status}")
                    return await _read_limited(response, max_bytes)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                cause = getattr(exc, "os_error", exc)
                if isinstance(cause, _NotPublicError) or isinstance(exc, _NotPublicError):
                    raise _refused("the address is not public") from None
                raise _refused(f"could not be fetched ({type(exc).__name__})") from None
        raise _refused(f"more than {MAX_REDIRECTS} redirects")

    async def json(self, url: str, *, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        """A small JSON object (a platform's media lookup)."""
        body = await self.fetch(url, max_bytes=64 * 1024, headers=headers)
        try:
            document = json.loads(body)
        except ValueError:
            raise _refused("the answer is not JSON") from None
        if not isinstance(document, dict):
            raise _refused("the answer is not a JSON object")
        return document

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                resolver=_PublicOnlyResolver(allow_private=self._allow_private), limit=32
            )
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    def _check_host(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _refused("an http(s) URL with a host")
        host = parts.hostname
        literal: Any
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            return  # a name: checked by the resolver when connecting
        if not _allowed(str(literal), allow_private=self._allow_private):
            raise _refused("the address is not public")


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname or "", parts.port


async def _read_limited(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    declared = response.content_length
    if declared is not None and declared > max_bytes:
        raise _refused(f"larger than {max_bytes} bytes")
    body = bytearray()
    async for chunk in response.content.iter_chunked(_CHUNK):
        body += chunk
        if len(body) > max_bytes:
            raise _refused(f"larger than {max_bytes} bytes")
    return bytes(body)
