"""Messenger Send API: POST {base}/{version}/me/messages with the page token."""

from __future__ import annotations

import json
import re
from typing import Any

import aiohttp

from chat.v1 import common_pb2
from server.channels.base import (
    HOLD_CHANNEL,
    READ,
    TYPING,
    TYPING_OFF,
    Action,
    ChannelResponse,
    HttpAnswer,
    Outbound,
    call,
    content_problem,
    send_parts,
    transport_failure,
)
from server.channels.formatting import media_label, split_text, to_plain
from server.domain.tenant import Tenant

TEXT_LIMIT = 2000
QUICK_REPLY_LIMIT = 13
BUTTON_LIMIT = 3
_PSID = re.compile(r"^\d{5,32}$")
#: Rate limits and temporary failures; everything else is permanent.
TRANSIENT_CODES = {"1", "2", "4", "613", "1200"}


class MessengerChannel:
    """Plain text, quick replies or a button template."""

    channel_type: int = common_pb2.CHANNEL_TYPE_MESSENGER

    def __init__(self, *, http: aiohttp.ClientSession, base_url: str, version: str) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._version = version

    def validate_recipient(self, recipient_id: str) -> str:
        return "" if _PSID.match(recipient_id) else "a page-scoped user id (PSID)"

    def validate_config(self, tenant: Tenant) -> str:
        config = tenant.channels.messenger
        if config is None or not config.page_access_token:
            return "messenger.page_access_token is required"
        return ""

    def format_message(self, outbound: Outbound) -> list[dict[str, Any]]:
        content = outbound.message.content
        kind = content.WhichOneof("kind")
        base = {"recipient": {"id": outbound.recipient_id}, "messaging_type": "RESPONSE"}
        if kind == "text":
            return [
                {**base, "message": {"text": piece}}
                for piece in split_text(to_plain(content.text.text), TEXT_LIMIT)
            ]
        if kind == "location":
            location = content.location
            link = f"https://maps.google.com/?q={location.latitude},{location.longitude}"
            label = " - ".join(filter(None, [location.name, location.address]))
            return [{**base, "message": {"text": f"{label} {link}".strip()}}]
        if kind == "interactive":
            return [{**base, "message": _interactive(content.interactive)}]
        if kind == "media":
            # Sent by the attachment id the upload returns (send_message uploads first);
            # Messenger attachments carry no caption, so it follows as a text.
            media = content.media
            bodies: list[dict[str, Any]] = [
                {
                    **base,
                    "message": {
                        "attachment": {
                            "type": _attachment_type(media.mime_type),
                            "payload": {"attachment_id": ""},
                        }
                    },
                }
            ]
            if media.caption:
                bodies.append({**base, "message": {"text": to_plain(media.caption)[:TEXT_LIMIT]}})
            return bodies
        return []

    async def send_message(self, outbound: Outbound) -> ChannelResponse:
        config = outbound.tenant.channels.messenger
        assert config is not None  # noqa: S101 - validate_config ran first
        auth = {"Authorization": f"Bearer {config.page_access_token}"}
        url = f"{self._base}/{self._version}/me/messages"

        bodies = self.format_message(outbound)
        media = outbound.message.content.media
        if outbound.message.content.WhichOneof("kind") == "media" and outbound.media is None:
            # No stored bytes to upload: the caption and the file's name, as text.
            base = {"recipient": {"id": outbound.recipient_id}, "messaging_type": "RESPONSE"}
            bodies = [{**base, "message": {"text": to_plain(media_label(media))[:TEXT_LIMIT]}}]
        elif outbound.message.content.WhichOneof("kind") == "media" and outbound.skip_parts == 0:
            uploaded = await self._upload(auth, outbound)
            if not uploaded.success:
                return uploaded
            bodies[0]["message"]["attachment"]["payload"]["attachment_id"] = (
                uploaded.platform_message_id
            )

        async def send_one(body: dict[str, Any]) -> ChannelResponse:
            return await self._post(url, auth, body)

        return await send_parts(bodies, skip=outbound.skip_parts, send_one=send_one)

    async def _upload(self, auth: dict[str, str], outbound: Outbound) -> ChannelResponse:
        """The Attachment Upload API: the bytes once, an attachment id back."""
        media = outbound.message.content.media
        form = aiohttp.FormData()
        form.add_field(
            "message",
            json.dumps(
                {
                    "attachment": {
                        "type": _attachment_type(media.mime_type),
                        "payload": {"is_reusable": True},
                    }
                }
            ),
        )
        form.add_field(
            "filedata",
            outbound.media or b"",
            filename=media.file_name or "media",
            content_type=media.mime_type,
        )
        url = f"{self._base}/{self._version}/me/message_attachments"
        answer = await call(self._http, "POST", url, headers=auth, data=form)
        failure = _failure(answer)
        if failure is not None:
            return failure
        attachment_id = answer.body.get("attachment_id")
        if not attachment_id:
            return ChannelResponse.failed(
                "NO_ATTACHMENT_ID", "the upload answered without an attachment id", retryable=True
            )
        return ChannelResponse(success=True, platform_message_id=str(attachment_id))

    def validate_content(self, message: common_pb2.Message) -> str:
        return content_problem(message)

    async def health_check(self, tenant: Tenant) -> ChannelResponse:
        """GET /me with the page token: the page, if the token is still valid."""
        config = tenant.channels.messenger
        assert config is not None  # noqa: S101 - validate_config ran first
        answer = await call(
            self._http,
            "GET",
            f"{self._base}/{self._version}/me?fields=id",
            headers={"Authorization": f"Bearer {config.page_access_token}"},
        )
        failure = _failure(answer)
        return failure if failure is not None else ChannelResponse(success=True)

    async def send_action(self, action: Action) -> ChannelResponse | None:
        """sender_action: typing_on, typing_off, mark_seen."""
        config = action.tenant.channels.messenger
        sender_action = {TYPING: "typing_on", TYPING_OFF: "typing_off", READ: "mark_seen"}.get(
            action.kind
        )
        if config is None or sender_action is None:
            return None
        return await self._post(
            f"{self._base}/{self._version}/me/messages",
            {"Authorization": f"Bearer {config.page_access_token}"},
            {"recipient": {"id": action.recipient_id}, "sender_action": sender_action},
        )

    async def _post(self, url: str, auth: dict[str, str], body: dict[str, Any]) -> ChannelResponse:
        answer = await call(self._http, "POST", url, headers=auth, json_body=body)
        failure = _failure(answer)
        if failure is not None:
            return failure
        message_id = answer.body.get("message_id")
        return ChannelResponse(success=True, platform_message_id=str(message_id or ""))


def _failure(answer: HttpAnswer) -> ChannelResponse | None:
    """What went wrong with a Send or Upload API call, or None when it succeeded."""
    failure = transport_failure(answer)
    if failure is None and answer.status != 200:
        failure = _refused(answer)
    return failure


def _refused(answer: HttpAnswer) -> ChannelResponse:
    """Meta's error, classified: its rate limits hold the page, its temporary codes retry."""
    found = answer.body.get("error")
    error: dict[str, Any] = found if isinstance(found, dict) else {}
    code = str(error.get("code", answer.status))
    return ChannelResponse.failed(
        code,
        str(error.get("message", "the platform refused the message")),
        retryable=code in TRANSIENT_CODES,
        http_status=answer.status,
        hold=HOLD_CHANNEL if code in ("4", "613") else "",  # the page's rate limits
    )


def _attachment_type(mime: str) -> str:
    family = mime.partition("/")[0]
    return family if family in ("image", "audio", "video") else "file"


def _interactive(interactive: common_pb2.InteractiveContent) -> dict[str, Any]:
    text = to_plain(interactive.body)[:640] or " "
    kind = interactive.WhichOneof("kind")
    if kind == "buttons" and len(interactive.buttons.buttons) <= BUTTON_LIMIT:
        buttons = [
            {"type": "web_url", "url": b.url, "title": b.title[:20]}
            if b.url
            else {"type": "postback", "title": b.title[:20], "payload": (b.id or b.title)[:1000]}
            for b in interactive.buttons.buttons
        ]
        return {
            "attachment": {
                "type": "template",
                "payload": {"template_type": "button", "text": text, "buttons": buttons},
            }
        }
    choices = [(b.id or b.title, b.title) for b in interactive.buttons.buttons]
    choices += [(q.id or q.title, q.title) for q in interactive.quick_replies.quick_replies]
    choices += [(r.id, r.title) for s in interactive.list.sections for r in s.rows]
    if len(choices) > QUICK_REPLY_LIMIT:
        # Documented fallback: more choices than Messenger shows become a numbered list.
        lines = [f"{n}. {title}" for n, (_, title) in enumerate(choices, 1)]
        return {"text": "\n".join([text, *lines])[:TEXT_LIMIT]}
    return {
        "text": text,
        "quick_replies": [
            {"content_type": "text", "title": title[:20], "payload": cid[:1000]}
            for cid, title in choices
        ],
    }
