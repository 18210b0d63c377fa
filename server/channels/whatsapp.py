"""WhatsApp Cloud API: POST {base}/{version}/{phone_number_id}/messages."""

from __future__ import annotations

from typing import Any

import aiohttp

from chat.v1 import common_pb2
from server.channels.base import (
    E164,
    HOLD_CHANNEL,
    HOLD_DESTINATION,
    READ,
    TYPING,
    Action,
    ChannelResponse,
    Outbound,
    call,
    content_problem,
    send_parts,
    transport_failure,
)
from server.channels.formatting import split_text, to_whatsapp
from server.domain.tenant import Tenant

TEXT_LIMIT = 4096
BUTTON_LIMIT = 3
BUTTON_TITLE_LIMIT = 20
LIST_ROW_LIMIT = 10
#: Errors a later attempt may get past (rate and throughput limits, temporary trouble).
TRANSIENT_CODES = {"4", "80007", "130429", "131056", "131000", "131016"}
#: Rate limits among them.
RATE_CODES = {"4", "80007", "130429", "131056"}


class WhatsAppChannel:
    """One tenant's phone number id and token come with each send."""

    channel_type: int = common_pb2.CHANNEL_TYPE_WHATSAPP

    def __init__(self, *, http: aiohttp.ClientSession, base_url: str, version: str) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._version = version

    def validate_recipient(self, recipient_id: str) -> str:
        return "" if E164.match(recipient_id) else "a phone number in E.164 form"

    def validate_config(self, tenant: Tenant) -> str:
        config = tenant.channels.whatsapp
        if config is None or not config.phone_number_id or not config.access_token:
            return "whatsapp.phone_number_id and access_token are required"
        return ""

    def format_message(self, outbound: Outbound) -> list[dict[str, Any]]:
        content = outbound.message.content
        kind = content.WhichOneof("kind")
        base = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": outbound.recipient_id.lstrip("+"),
        }
        if kind == "text":
            return [
                {**base, "type": "text", "text": {"body": piece, "preview_url": True}}
                for piece in split_text(to_whatsapp(content.text.text), TEXT_LIMIT)
            ]
        if kind == "location":
            location = content.location
            place: dict[str, Any] = {"latitude": location.latitude, "longitude": location.longitude}
            place |= {
                k: v for k, v in (("name", location.name), ("address", location.address)) if v
            }
            return [{**base, "type": "location", "location": place}]
        if kind == "interactive":
            fallback = _numbered(content.interactive)
            if fallback is not None:
                return [{**base, "type": "text", "text": {"body": fallback[:TEXT_LIMIT]}}]
            return [
                {**base, "type": "interactive", "interactive": _interactive(content.interactive)}
            ]
        if kind == "media":
            # Sent by the id the upload returns (send_message uploads first).
            media = content.media
            kind_name = _media_kind(media.mime_type)
            sent: dict[str, Any] = {"id": media.media_id}
            if media.caption and kind_name in ("image", "video", "document"):
                sent["caption"] = media.caption[:1024]
            if kind_name == "document" and media.file_name:
                sent["filename"] = media.file_name
            return [{**base, "type": kind_name, kind_name: sent}]
        return []

    async def send_message(self, outbound: Outbound) -> ChannelResponse:
        config = outbound.tenant.channels.whatsapp
        assert config is not None  # noqa: S101 - validate_config ran first
        auth = {"Authorization": f"Bearer {config.access_token}"}
        url = f"{self._base}/{self._version}/{config.phone_number_id}"
        bodies = self.format_message(outbound)
        if outbound.message.content.WhichOneof("kind") == "media":
            uploaded = await self._upload(url, auth, outbound)
            if not uploaded.success:
                return uploaded
            for body in bodies:
                body[body["type"]]["id"] = uploaded.platform_message_id

        async def send_one(body: dict[str, Any]) -> ChannelResponse:
            return await self._post(url, auth, body)

        return await send_parts(bodies, skip=outbound.skip_parts, send_one=send_one)

    def validate_content(self, message: common_pb2.Message) -> str:
        return content_problem(message)

    async def health_check(self, tenant: Tenant) -> ChannelResponse:
        """GET /{phone_number_id}: the number, if the token may use it."""
        config = tenant.channels.whatsapp
        assert config is not None  # noqa: S101 - validate_config ran first
        answer = await call(
            self._http,
            "GET",
            f"{self._base}/{self._version}/{config.phone_number_id}?fields=id",
            headers={"Authorization": f"Bearer {config.access_token}"},
        )
        failure = transport_failure(answer)
        if failure is not None:
            return failure
        if answer.status != 200:
            return _error(answer.status, answer.body)
        return ChannelResponse(success=True)

    async def send_action(self, action: Action) -> ChannelResponse | None:
        """Typing and read receipts are one call against the user's message: typing marks it
        read too, and shows the indicator until the reply (or 25 s). No "stopped typing"."""
        if action.kind not in (TYPING, READ) or not action.platform_message_id:
            return None
        config = action.tenant.channels.whatsapp
        if config is None:
            return None
        body: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": action.platform_message_id,
        }
        if action.kind == TYPING:
            body["typing_indicator"] = {"type": "text"}
        return await self._post(
            f"{self._base}/{self._version}/{config.phone_number_id}",
            {"Authorization": f"Bearer {config.access_token}"},
            body,
        )

    async def _post(self, url: str, auth: dict[str, str], body: dict[str, Any]) -> ChannelResponse:
        answer = await call(self._http, "POST", f"{url}/messages", headers=auth, json_body=body)
        if answer.status == 429 and isinstance(answer.body.get("error"), dict):
            # The code says what the limit covers (131056: this recipient only).
            limited = _error(answer.status, answer.body)
            limited.retry_after = answer.retry_after
            if limited.error is not None:
                limited.error.retryable = True
            limited.hold = limited.hold or HOLD_CHANNEL
            return limited
        failure = transport_failure(answer)
        if failure is not None:
            return failure
        if answer.status != 200:
            return _error(answer.status, answer.body)
        messages = answer.body.get("messages")
        first = messages[0] if isinstance(messages, list) and messages else None
        platform_id = first.get("id") if isinstance(first, dict) else None
        return ChannelResponse(success=True, platform_message_id=str(platform_id or ""))

    async def _upload(self, url: str, auth: dict[str, str], outbound: Outbound) -> ChannelResponse:
        media = outbound.message.content.media
        if outbound.media is None:
            return ChannelResponse.failed(
                "MEDIA_MISSING", "the media bytes are gone", retryable=False
            )
        form = aiohttp.FormData()
        form.add_field("messaging_product", "whatsapp")
        form.add_field("type", media.mime_type)
        form.add_field(
            "file",
            outbound.media,
            filename=media.file_name or "media",
            content_type=media.mime_type,
        )
        answer = await call(self._http, "POST", f"{url}/media", headers=auth, data=form)
        failure = transport_failure(answer)
        if failure is not None:
            return failure
        if answer.status != 200 or not answer.body.get("id"):
            return _error(answer.status, answer.body)
        return ChannelResponse(success=True, platform_message_id=str(answer.body["id"]))


def _interactive(interactive: common_pb2.InteractiveContent) -> dict[str, Any]:
    body: dict[str, Any] = {"body": {"text": to_whatsapp(interactive.body)[:1024] or " "}}
    if interactive.header:
        body["header"] = {"type": "text", "text": interactive.header[:60]}
    if interactive.footer:
        body["footer"] = {"text": interactive.footer[:60]}
    kind = interactive.WhichOneof("kind")
    choices = (
        [(b.id or b.title, b.title) for b in interactive.buttons.buttons]
        if kind == "buttons"
        else [(q.id or q.title, q.title) for q in interactive.quick_replies.quick_replies]
    )
    if kind == "list":
        sections = [
            {
                "title": section.title[:24],
                "rows": [
                    {
                        "id": row.id[:200],
                        "title": row.title[:24],
                        "description": row.description[:72],
                    }
                    for row in section.rows[:LIST_ROW_LIMIT]
                ],
            }
            for section in interactive.list.sections
        ]
        return {
            **body,
            "type": "list",
            "action": {
                "button": interactive.list.button_text[:20] or "Choose",
                "sections": sections,
            },
        }
    if len(choices) <= BUTTON_LIMIT:
        return {
            **body,
            "type": "button",
            "action": {
                "buttons": [
                    {
                        "type": "reply",
                        "reply": {"id": cid[:256], "title": title[:BUTTON_TITLE_LIMIT]},
                    }
                    for cid, title in choices
                ]
            },
        }
    # More than three choices: WhatsApp's list message takes up to ten.
    rows = [{"id": cid[:200], "title": title[:24]} for cid, title in choices[:LIST_ROW_LIMIT]]
    return {**body, "type": "list", "action": {"button": "Choose", "sections": [{"rows": rows}]}}


def _numbered(interactive: common_pb2.InteractiveContent) -> str | None:
    """The documented fallback where WhatsApp has no form: cards and carousels, and more
    choices than a list message holds, become a numbered text list (links kept)."""
    kind = interactive.WhichOneof("kind")
    if kind in ("card", "carousel"):
        cards = [interactive.card] if kind == "card" else list(interactive.carousel.cards)
        lines = []
        for card in cards:
            lines.append(" - ".join(filter(None, [card.title, card.subtitle])))
            lines += [f"  {b.title}: {b.url}" if b.url else f"  {b.title}" for b in card.buttons]
        return "\n".join([to_whatsapp(interactive.body), *lines]).strip()
    choices = [b.title + (f" ({b.url})" if b.url else "") for b in interactive.buttons.buttons]
    choices += [q.title for q in interactive.quick_replies.quick_replies]
    rows = [r.title for section in interactive.list.sections for r in section.rows]
    if len(choices) > LIST_ROW_LIMIT or len(rows) > LIST_ROW_LIMIT:
        numbered = [f"{n}. {title}" for n, title in enumerate(choices or rows, 1)]
        return "\n".join([to_whatsapp(interactive.body), *numbered])
    return None


def _media_kind(mime: str) -> str:
    family = mime.partition("/")[0]
    return family if family in ("image", "audio", "video") else "document"


def _error(status: int, body: dict[str, Any]) -> ChannelResponse:
    found = body.get("error")
    error: dict[str, Any] = found if isinstance(found, dict) else {}
    code = str(error.get("code", status))
    return ChannelResponse.failed(
        code,
        str(error.get("message", "the platform refused the message")),
        retryable=code in TRANSIENT_CODES,
        http_status=status,
        # 131056 is the pair limit (this recipient); the others limit the number or account.
        hold=HOLD_DESTINATION if code == "131056" else HOLD_CHANNEL if code in RATE_CODES else "",
    )
