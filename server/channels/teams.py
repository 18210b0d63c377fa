"""Bot Framework connector: POST {serviceUrl}/v3/conversations/{id}/activities, with an app
token from the client-credentials flow (cached until shortly before it expires)."""

from __future__ import annotations

import asyncio
import base64
import re
import time
from typing import Any
from urllib.parse import quote

import aiohttp

from chat.v1 import common_pb2
from server.channels.base import (
    HOLD_DESTINATION,
    TYPING,
    Action,
    ChannelResponse,
    Outbound,
    call,
    content_problem,
    send_parts,
    transport_failure,
)
from server.channels.formatting import media_label, split_text
from server.domain.tenant import Tenant

SCOPE = "https://api.botframework.com/.default"
#: Transient besides 429 and 5xx; 403, 404 and 413 are permanent.
TRANSIENT_STATUSES = {412, 502, 504}
#: Teams refuses a text message past about 28 KB (413, permanent): a longer text is sent as
#: several, each of at most this many characters. JSON escapes every non-ASCII character
#: (\uXXXX, twelve bytes for an emoji's surrogate pair), so 2000 stay under 28 KB whatever
#: the script.
TEXT_LIMIT = 2000
#: A refused or failed token request is the answer for this long: the sends waiting for a
#: token do not each ask again.
TOKEN_FAILURE_SECONDS = 5.0
#: Conversation ids: personal chats "a:...", channels and group chats "19:...@thread...",
#: users "29:..." (a thread reply may carry ";messageid=..."); at most 1024 characters.
_CONVERSATION = re.compile(r"(?:a|19|29):\S{1,1020}")


class TeamsChannel:
    """Markdown text, or an Adaptive Card for choices."""

    channel_type: int = common_pb2.CHANNEL_TYPE_TEAMS

    def __init__(self, *, http: aiohttp.ClientSession, token_url: str) -> None:
        self._http = http
        self._token_url = token_url
        self._tokens: dict[str, tuple[str, float]] = {}
        #: One token request at a time per tenant (another tenant's slow one does not wait).
        self._locks: dict[str, asyncio.Lock] = {}
        self._failures: dict[str, tuple[ChannelResponse, float]] = {}

    def validate_recipient(self, recipient_id: str) -> str:
        if _CONVERSATION.fullmatch(recipient_id):
            return ""
        return "a Teams conversation id (a:..., 19:...@thread... or 29:...)"

    def validate_config(self, tenant: Tenant) -> str:
        config = tenant.channels.teams
        if config is None or not config.app_id or not config.app_password:
            return "teams.app_id and app_password are required"
        return ""

    def format_message(self, outbound: Outbound) -> list[dict[str, Any]]:
        content = outbound.message.content
        kind = content.WhichOneof("kind")
        activity: dict[str, Any] = {"type": "message"}
        if kind == "text":
            return [
                {**activity, "textFormat": "markdown", "text": piece}
                for piece in split_text(content.text.text, TEXT_LIMIT)
            ]
        if kind == "location":
            location = content.location
            link = f"https://maps.google.com/?q={location.latitude},{location.longitude}"
            label = location.name or "Location"
            return [
                {
                    **activity,
                    "textFormat": "markdown",
                    "text": f"[{label}]({link}) {location.address}".strip(),
                }
            ]
        if kind == "interactive":
            return [{**activity, "attachments": [_card(content.interactive)]}]
        if kind == "media":
            return [_media_activity(content.media, outbound.media)]
        return []

    async def send_message(self, outbound: Outbound) -> ChannelResponse:
        config = outbound.tenant.channels.teams
        assert config is not None  # noqa: S101 - validate_config ran first
        if not outbound.service_url:
            return ChannelResponse.failed(
                "NO_SERVICE_URL", "no serviceUrl known for this conversation", retryable=False
            )
        url = _activities_url(outbound.service_url, outbound.recipient_id)

        async def send_one(body: dict[str, Any]) -> ChannelResponse:
            return await self._post(outbound.tenant, url, body)

        return await send_parts(
            self.format_message(outbound), skip=outbound.skip_parts, send_one=send_one
        )

    def validate_content(self, message: common_pb2.Message) -> str:
        return content_problem(message)

    async def health_check(self, tenant: Tenant) -> ChannelResponse:
        """A client-credentials token request: whether the app id and password are accepted
        (the Bot Framework has no call that needs no conversation)."""
        async with self._locks.setdefault(tenant.id, asyncio.Lock()):
            token = await self._fetch_token(tenant)
        return token if isinstance(token, ChannelResponse) else ChannelResponse(success=True)

    async def send_action(self, action: Action) -> ChannelResponse | None:
        """A typing activity; Teams has no read receipt a bot can send."""
        if action.kind != TYPING or not action.service_url or action.tenant.channels.teams is None:
            return None
        url = _activities_url(action.service_url, action.recipient_id)
        return await self._post(action.tenant, url, {"type": "typing"})

    async def _post(self, tenant: Tenant, url: str, body: dict[str, Any]) -> ChannelResponse:
        token = await self.token(tenant)
        if isinstance(token, ChannelResponse):
            return token
        answer = await call(
            self._http,
            "POST",
            url,
            headers={"Authorization": f"Bearer {token}"},
            json_body=body,
        )
        if answer.status == 401:
            self._tokens.pop(tenant.id, None)  # expired early: a new one next time
            return ChannelResponse.failed("401", "token refused", retryable=True, http_status=401)
        failure = transport_failure(answer)
        if failure is not None:
            if failure.hold:
                failure.hold = HOLD_DESTINATION  # Teams limits each conversation
            return failure
        if answer.status >= 300:
            return ChannelResponse.failed(
                str(answer.status),
                str(answer.body.get("error", answer.body))[:300],
                retryable=answer.status in TRANSIENT_STATUSES,
                http_status=answer.status,
            )
        return ChannelResponse(success=True, platform_message_id=str(answer.body.get("id", "")))

    async def token(self, tenant: Tenant) -> str | ChannelResponse:
        """The tenant's bot token (cached), or the failure that kept it from us. Concurrent
        sends without a token wait for one request rather than each making their own."""
        cached = self._tokens.get(tenant.id)
        if cached is not None and time.time() < cached[1]:
            return cached[0]
        async with self._locks.setdefault(tenant.id, asyncio.Lock()):
            cached = self._tokens.get(tenant.id)
            if cached is not None and time.time() < cached[1]:
                return cached[0]
            failed = self._failures.get(tenant.id)
            if failed is not None and time.monotonic() < failed[1]:
                return failed[0]
            token = await self._fetch_token(tenant)
            if isinstance(token, ChannelResponse):
                self._failures[tenant.id] = (token, time.monotonic() + TOKEN_FAILURE_SECONDS)
            else:
                self._failures.pop(tenant.id, None)
            return token

    async def _fetch_token(self, tenant: Tenant) -> str | ChannelResponse:
        config = tenant.channels.teams
        assert config is not None  # noqa: S101
        url = self._token_url
        if config.app_tenant_id:  # single-tenant bots get their token from their own tenant
            url = url.replace("botframework.com/oauth2", f"{config.app_tenant_id}/oauth2")
        form = {
            "grant_type": "client_credentials",
            "client_id": config.app_id,
            "client_secret": config.app_password,
            "scope": SCOPE,
        }
        answer = await call(self._http, "POST", url, headers={}, data=form)
        failure = transport_failure(answer)
        if failure is not None:
            return failure
        token = answer.body.get("access_token")
        if answer.status != 200 or not isinstance(token, str):
            return ChannelResponse.failed(
                "TOKEN", "client credentials refused", retryable=False, http_status=answer.status
            )
        try:
            lifetime = min(86400.0, float(answer.body.get("expires_in", 3600)))
        except (TypeError, ValueError):
            lifetime = 3600.0
        # Renewed five minutes before it expires (sooner for a short-lived one), so no send
        # carries a token that lapses on its way.
        margin = min(300.0, lifetime / 10)
        self._tokens[tenant.id] = (token, time.time() + lifetime - margin)
        return token


#: Images Teams renders in the message itself, sent inline as a data URI (the service has no
#: public URL to give the Bot Framework for a file).
INLINE_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif"})
#: Teams refuses an activity of more than about 100 KB (413); base64 adds a third, so an image
#: of up to 64 KiB goes inline, with room left for its caption.
MAX_INLINE_IMAGE_BYTES = 64 * 1024


def _media_activity(media: common_pb2.MediaContent, data: bytes | None) -> dict[str, Any]:
    """A small image inline, its caption as the text; anything else (video, audio, documents,
    larger images, media whose bytes are gone) as its caption and file name."""
    if (
        data is None
        or media.mime_type not in INLINE_IMAGE_TYPES
        or len(data) > MAX_INLINE_IMAGE_BYTES
    ):
        return {"type": "message", "text": media_label(media)}
    attachment = {
        "contentType": media.mime_type,
        "contentUrl": f"data:{media.mime_type};base64,{base64.b64encode(data).decode()}",
        "name": media.file_name or "image",
    }
    activity: dict[str, Any] = {"type": "message", "attachments": [attachment]}
    if media.caption:
        activity |= {"textFormat": "markdown", "text": media.caption}
    return activity


def _card(interactive: common_pb2.InteractiveContent) -> dict[str, Any]:
    choices = [(b.id or b.title, b.title, b.url) for b in interactive.buttons.buttons]
    choices += [(q.id or q.title, q.title, "") for q in interactive.quick_replies.quick_replies]
    choices += [(r.id, r.title, "") for s in interactive.list.sections for r in s.rows]
    body: list[dict[str, Any]] = []
    if interactive.header:
        body.append({"type": "TextBlock", "text": interactive.header, "weight": "Bolder"})
    body.append({"type": "TextBlock", "text": interactive.body, "wrap": True})
    actions = [
        {"type": "Action.OpenUrl", "title": title, "url": url}
        if url
        else {"type": "Action.Submit", "title": title, "data": {"id": choice_id}}
        for choice_id, title, url in choices
    ]
    return {
        "contentType": "application/vnd.microsoft.card.adaptive",
        "content": {
            "type": "AdaptiveCard",
            "version": "1.4",
            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "body": body,
            "actions": actions,
        },
    }


def _activities_url(service_url: str, conversation_id: str) -> str:
    """Where activities for a conversation are posted."""
    return (
        f"{service_url.rstrip('/')}/v3/conversations/{quote(conversation_id, safe='')}/activities"
    )
