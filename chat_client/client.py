"""The asyncio client: one channel, the stubs of every service, and the calls through them
with the token, a request id, a deadline, retries and typed errors."""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self, TypeVar

import grpc
from google.protobuf.message import Message

from chat.v1 import analytics_service_pb2_grpc as analytics_grpc
from chat.v1 import audit_service_pb2_grpc as audit_grpc
from chat.v1 import chat_service_pb2_grpc as chat_grpc
from chat.v1 import delivery_service_pb2_grpc as delivery_grpc
from chat.v1 import ingest_service_pb2_grpc as ingest_grpc
from chat.v1 import session_service_pb2_grpc as session_grpc
from chat.v1 import tenant_service_pb2_grpc as tenant_grpc
from chat_client.errors import ChatError
from chat_client.retry import RetryPolicy, is_read

if TYPE_CHECKING:
    from chat.v1.analytics_service_pb2_grpc import AnalyticsServiceAsyncStub
    from chat.v1.audit_service_pb2_grpc import AuditServiceAsyncStub
    from chat.v1.chat_service_pb2_grpc import ChatServiceAsyncStub
    from chat.v1.delivery_service_pb2_grpc import DeliveryServiceAsyncStub
    from chat.v1.ingest_service_pb2_grpc import IngestServiceAsyncStub
    from chat.v1.session_service_pb2_grpc import SessionServiceAsyncStub
    from chat.v1.tenant_service_pb2_grpc import TenantServiceAsyncStub

#: A bearer token, or a function (plain or async) asked before every call, so it can refresh.
Token = str | Callable[[], str] | Callable[[], Awaitable[str]]

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)
Item = TypeVar("Item")


class PageRequest(Protocol):
    """A List/Search request: AIP cursor pages."""

    page_token: str


class PageResponse(Protocol):
    """A List/Search response: empty ``next_page_token`` on the last page."""

    next_page_token: str


PReq = TypeVar("PReq", bound=PageRequest)
PResp = TypeVar("PResp", bound=PageResponse)

#: Seconds a unary call may take, unless the call says otherwise.
DEFAULT_DEADLINE = 30.0


def new_request_id() -> str:
    """A fresh id for ``x-request-id`` and ``request_id`` fields."""
    return uuid.uuid4().hex


def open_channel(address: str, *, tls: bool | None = None) -> grpc.aio.Channel:
    """A channel to ``host:port``; TLS for ``https://`` or ``grpcs://`` addresses (or
    ``tls=True``), plaintext for a bare ``host:port`` or ``http://``."""
    scheme, _, rest = address.partition("://")
    target = rest if rest else address
    if not rest:
        scheme = ""
    use_tls = tls if tls is not None else scheme in {"https", "grpcs"}
    if use_tls:
        return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials())
    return grpc.aio.insecure_channel(target)


class ChatClient:
    """Every ``chat.v1`` service over one channel.

    The stubs (``chat``, ``sessions``, ``ingest``, ``deliveries``, ``tenants``, ``analytics``,
    ``audit``) are the generated ones; call them through ``call``, ``stream`` and ``pages`` to
    get the token, ``x-request-id``, the deadline, retries and ``ChatError``.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        token: Token | None = None,
        deadline: float | None = DEFAULT_DEADLINE,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        request_ids: Callable[[], str] = new_request_id,
    ) -> None:
        self.channel = channel
        self._token = token
        self._deadline = deadline
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._request_ids = request_ids
        self.chat: ChatServiceAsyncStub = chat_grpc.ChatServiceStub(channel)
        self.sessions: SessionServiceAsyncStub = session_grpc.SessionServiceStub(channel)
        self.ingest: IngestServiceAsyncStub = ingest_grpc.IngestServiceStub(channel)
        self.deliveries: DeliveryServiceAsyncStub = delivery_grpc.DeliveryServiceStub(channel)
        self.tenants: TenantServiceAsyncStub = tenant_grpc.TenantServiceStub(channel)
        self.analytics: AnalyticsServiceAsyncStub = analytics_grpc.AnalyticsServiceStub(channel)
        self.audit: AuditServiceAsyncStub = audit_grpc.AuditServiceStub(channel)

    @classmethod
    def connect(
        cls,
        address: str,
        *,
        tls: bool | None = None,
        token: Token | None = None,
        deadline: float | None = DEFAULT_DEADLINE,
        retry: RetryPolicy | None = None,
    ) -> Self:
        """A client on a new channel to ``address`` (see ``open_channel``); close it, or use
        it as ``async with``."""
        return cls(open_channel(address, tls=tls), token=token, deadline=deadline, retry=retry)

    async def close(self) -> None:
        await self.channel.close(None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def metadata(self, request_id: str) -> tuple[tuple[str, str], ...]:
        """The call's metadata: the request id and, when there is one, the current token."""
        entries = [("x-request-id", request_id)]
        token = self._token
        if callable(token):
            value = token()
            token = await value if inspect.isawaitable(value) else value
        if token:
            entries.append(("authorization", f"Bearer {token}"))
        return tuple(entries)

    async def call(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        *,
        deadline: float | None = None,
        idempotent: bool | None = None,
        request_id: str | None = None,
    ) -> Resp:
        """One unary call. UNAVAILABLE and RESOURCE_EXHAUSTED are retried (after the server's
        RetryInfo delay at least) when the call is safe to repeat: a read, or a request that
        carries a ``request_id``; ``idempotent`` overrides that judgement. Every attempt
        sends the same ``x-request-id``. Fails with ChatError."""
        request_id = request_id or self._request_ids()
        if idempotent is None:
            idempotent = _safe_to_repeat(request)
        attempt = 0
        while True:
            attempt += 1
            try:
                return await method(
                    request,
                    metadata=await self.metadata(request_id),
                    timeout=deadline if deadline is not None else self._deadline,
                )
            except grpc.aio.AioRpcError as exc:
                error = ChatError.from_rpc_error(exc, request_id=request_id)
                delay = self._retry.delay(attempt, error) if idempotent else None
                if delay is None:
                    raise error from None
            await self._sleep(delay)

    async def stream(
        self,
        method: grpc.aio.UnaryStreamMultiCallable[Req, Resp],
        request: Req,
        *,
        deadline: float | None = None,
        request_id: str | None = None,
    ) -> AsyncIterator[Resp]:
        """The responses of a server-streaming call: no deadline unless ``deadline`` (seconds);
        not retried (a stream is resumed by its caller, e.g. with ``after_sequence``). Fails
        with ChatError."""
        request_id = request_id or self._request_ids()
        call = method(request, metadata=await self.metadata(request_id), timeout=deadline)
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as exc:
            raise ChatError.from_rpc_error(exc, request_id=request_id) from None
        finally:
            call.cancel()

    async def pages(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[PReq, PResp],
        request: PReq,
        items: Callable[[PResp], Iterable[Item]],
        *,
        limit: int | None = None,
        deadline: float | None = None,
    ) -> AsyncIterator[Item]:
        """Every item of a List or Search, page after page (each page a ``call``, so retried
        like one), up to ``limit`` items."""
        seen = 0
        while True:
            # PReq and PResp are generated messages too; a protocol cannot also say so.
            page = await self.call(method, request, deadline=deadline)  # type: ignore[type-var]
            for item in items(page):
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield item
            if not page.next_page_token or (limit is not None and seen >= limit):
                return
            following = type(request)()
            following.CopyFrom(request)  # type: ignore[attr-defined]
            following.page_token = page.next_page_token
            request = following


def _safe_to_repeat(request: Message) -> bool:
    """A read, or a request whose ``request_id`` makes a repeat answer the first call's way."""
    name = request.DESCRIPTOR.name.removesuffix("Request")
    if is_read(name):
        return True
    fields = request.DESCRIPTOR.fields_by_name
    return "request_id" in fields and bool(getattr(request, "request_id", ""))
