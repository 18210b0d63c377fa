"""What every channel adapter offers, and the HTTP plumbing they share."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from chat.v1 import common_pb2
from server.domain.tenant import Tenant

#: What a platform's rate limit covers (see ChannelResponse.hold).
HOLD_CHANNEL = "channel"
HOLD_DESTINATION = "destination"


@dataclass(slots=True)
class ChannelResponse:
    """The outcome of one send: success with the platform's message id, or an error that says
    whether a later attempt may succeed (and when: ``retry_after``)."""

    success: bool
    platform_message_id: str = ""
    status: common_pb2.DeliveryStatus.ValueType = common_pb2.DELIVERY_STATUS_SENT
    error: common_pb2.PlatformError | None = None
    retry_after: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    #: How many parts of a split message the platform has now, this attempt included.
    parts_sent: int = 0
    #: A rate limit that holds more than this delivery until ``retry_after``: HOLD_CHANNEL
    #: (the tenant's whole account on the platform) or HOLD_DESTINATION (this recipient).
    hold: str = ""

    @classmethod
    def failed(
        cls,
        code: str,
        message: str,
        *,
        retryable: bool,
        http_status: int = 0,
        retry_after: float | None = None,
        hold: str = "",
    ) -> ChannelResponse:
        return cls(
            success=False,
            status=common_pb2.DELIVERY_STATUS_FAILED,
            error=common_pb2.PlatformError(
                code=code, message=message[:500], retryable=retryable, http_status=http_status
            ),
            retry_after=retry_after,
            hold=hold,
        )


@dataclass(frozen=True, slots=True)
class Outbound:
    """One message to send, with where it goes."""

    tenant: Tenant
    message: common_pb2.Message
    recipient_id: str
    service_url: str = ""
    #: Stored media bytes, when the message is media.
    media: bytes | None = None
    #: Parts of a split message an earlier attempt already sent (not sent again).
    skip_parts: int = 0


#: Sender actions: the service side is typing (or stopped), or has read the user's message.
TYPING = "typing"
TYPING_OFF = "typing_off"
READ = "read"


@dataclass(frozen=True, slots=True)
class Action:
    """A sender action for one conversation on a platform."""

    tenant: Tenant
    kind: str
    recipient_id: str
    #: The user's message it concerns (WhatsApp marks read, and shows typing, against one).
    platform_message_id: str = ""
    service_url: str = ""


class Channel(Protocol):
    """A platform's send API."""

    channel_type: int

    def validate_recipient(self, recipient_id: str) -> str:
        """What is wrong with the address ("" when nothing)."""
        ...

    def validate_config(self, tenant: Tenant) -> str:
        """What is missing from the tenant's configuration ("" when nothing)."""
        ...

    def format_message(self, outbound: Outbound) -> list[dict[str, Any]]:
        """The platform request bodies, in order (a long text becomes several)."""
        ...

    async def send_message(self, outbound: Outbound) -> ChannelResponse:
        """Send; the first part's platform id names the message."""
        ...

    def validate_content(self, message: common_pb2.Message) -> str:
        """What keeps the message from being shown on this platform ("" when nothing)."""
        ...

    async def send_action(self, action: Action) -> ChannelResponse | None:
        """Show typing or mark read; None where the platform has no such action."""
        ...

    async def health_check(self, tenant: Tenant) -> ChannelResponse:
        """Whether the platform accepts the tenant's credentials, by its cheapest
        authenticated call; nothing is sent to anyone."""
        ...


#: What the bot can send on every platform (a user's choice, interactive_reply, is inbound).
SENDABLE_KINDS = frozenset({"text", "media", "location", "interactive"})


def content_problem(message: common_pb2.Message) -> str:
    """What no platform can show of this message ("" when nothing): the channels' shared
    validate_content."""
    content = message.content
    kind = content.WhichOneof("kind")
    if kind is None:
        return "the message has no content"
    if kind not in SENDABLE_KINDS:
        return f"{kind} cannot be sent to a platform"
    if kind == "text" and not content.text.text.strip():
        return "the text is empty"
    return ""


@dataclass(slots=True)
class HttpAnswer:
    """A platform's answer, or the transport failure instead of one."""

    status: int
    body: dict[str, Any]
    retry_after: float | None
    transport_error: str = ""


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str],
    json_body: Any = None,
    data: Any = None,
) -> HttpAnswer:
    """One HTTP call, within the client's deadline (CHAT_DELIVERY_SEND_TIMEOUT_MS); never
    raises for HTTP or network trouble."""
    try:
        async with http.request(
            method,
            url,
            json=json_body,
            data=data,
            headers=dict(headers),
        ) as response:
            raw = await response.read()
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                body = {"raw": raw[:200].decode("utf-8", "replace")}
            return HttpAnswer(
                response.status,
                body if isinstance(body, dict) else {"value": body},
                _retry_after(response.headers.get("Retry-After")),
            )
    except (aiohttp.ClientError, TimeoutError) as exc:
        return HttpAnswer(0, {}, None, transport_error=type(exc).__name__)


def transport_failure(answer: HttpAnswer) -> ChannelResponse | None:
    """The response for answers every platform treats alike: no answer, 429, 5xx."""
    if answer.transport_error:
        return ChannelResponse.failed(
            "TIMEOUT" if "Timeout" in answer.transport_error else "NETWORK",
            answer.transport_error,
            retryable=True,
        )
    if answer.status == 429:
        # Slack's and Meta's limits are per app or account: everything to that platform waits.
        return ChannelResponse.failed(
            "RATE_LIMITED",
            "the platform asked to slow down",
            retryable=True,
            http_status=429,
            retry_after=answer.retry_after,
            hold=HOLD_CHANNEL,
        )
    if answer.status >= 500:
        return ChannelResponse.failed(
            f"HTTP_{answer.status}",
            "the platform failed",
            retryable=True,
            http_status=answer.status,
        )
    return None


#: A Retry-After beyond this is treated as this (an hour): a queue is no place to wait longer.
MAX_RETRY_AFTER_SECONDS = 3600.0


def _retry_after(raw: str | None) -> float | None:
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None  # an HTTP date: the backoff applies instead
    if not math.isfinite(value):
        return MAX_RETRY_AFTER_SECONDS
    return min(max(0.0, value), MAX_RETRY_AFTER_SECONDS)


async def send_parts(
    bodies: list[dict[str, Any]],
    *,
    skip: int,
    send_one: Callable[[dict[str, Any]], Awaitable[ChannelResponse]],
) -> ChannelResponse:
    """Send the parts in order, from ``skip`` on; a failure says how many parts the platform
    has, so a retry resumes there instead of repeating them."""
    if not bodies:
        return ChannelResponse.failed(
            "UNSUPPORTED_CONTENT", "nothing this channel can show", retryable=False
        )
    first = ""
    for index, body in enumerate(bodies):
        if index < skip:
            continue
        response = await send_one(body)
        if not response.success:
            response.parts_sent = index
            response.platform_message_id = first
            return response
        first = first or response.platform_message_id
    return ChannelResponse(success=True, platform_message_id=first, parts_sent=len(bodies))


E164 = re.compile(r"^\+?[1-9]\d{6,14}$")
