"""Messenger Send API (with sender actions) and the Attachment Upload API; the webhooks a
user's messages, quick replies, postbacks and the delivery and read receipts arrive as."""

from __future__ import annotations

import asyncio
import functools
import json
import time
import uuid
from typing import Any

from aiohttp import web

from devstack.sandbox import checks
from devstack.sandbox.core import State, request_body
from devstack.sandbox.errors import Refused, checked
from devstack.sandbox.media import StoredMedia
from devstack.sandbox.panel import Handler
from devstack.sandbox.personas import Persona
from devstack.sandbox.recorder import is_action
from devstack.sandbox.whatsapp import VERSION

NAME = "messenger"


def add_routes(app: web.Application, state: State) -> Handler:
    """Registered before WhatsApp's: ``/me/...`` is Messenger's. The Send API's handler is
    returned: WhatsApp's ``/{id}/messages`` hands it a Messenger send to ``/{page-id}/...``."""

    async def messages(request: web.Request) -> web.Response:
        body = await request_body(request, NAME)
        state.record(request, NAME, body)
        # Checked before a fault is taken: a refused send does not use up the page's fault.
        checks.messenger(request, state, body)
        recipient = checked(NAME, lambda: str(body["recipient"]["id"]), "the recipient")
        action = is_action(body)
        preview = None if action else checked(NAME, lambda: view(body), "the message")
        mid = f"m_SBX{uuid.uuid4().hex}"
        # A sender action is answered with the recipient only, a message with its id too.
        success = (
            {"recipient_id": recipient}
            if action
            else {"recipient_id": recipient, "message_id": mid}
        )
        response, status, _ = await state.answer_send(
            platform=NAME, recipient=recipient, success=success, send=not action
        )
        if action:
            if body.get("sender_action") == "mark_seen":
                state.chats.read_by_bot(NAME, recipient)
        else:
            state.settle_send(
                NAME,
                recipient,
                sent=status == 200,
                platform_id=mid,
                view=preview,
                refusal=str(status),
                receipts=lambda: _receipts(state, recipient, mid),
            )
        return response

    async def attachment(request: web.Request) -> web.Response:
        checks.bearer(request, "messenger-upload")
        form = await request.post()
        data = form.get("filedata")
        if not isinstance(data, web.FileField):
            raise Refused("messenger-upload", "filedata is required")
        message = checked(
            "messenger-upload", lambda: json.loads(str(form.get("message", "{}"))), "message"
        )
        body = {
            "message": message,
            "size": len(data.file.read()),
            "filename": data.filename,
            "content_type": data.content_type,
        }
        state.record(request, "messenger-upload", body)
        return web.json_response({"attachment_id": "1857777774821032"})

    app.router.add_post(f"/{VERSION}/me/messages", messages)
    app.router.add_post(f"/{VERSION}/me/message_attachments", attachment)
    return messages


async def _receipts(state: State, psid: str, mid: str) -> None:
    """A delivery receipt naming the message, then a read receipt (a watermark)."""
    for kind in ("delivery", "read"):
        await asyncio.sleep(state.receipt_delay)
        now = int(time.time() * 1000)
        receipt: dict[str, Any] = {"watermark": now}
        if kind == "delivery":
            receipt["mids"] = [mid]
        payload = _event(state, psid, {kind: receipt})
        if await state.post_receipt(functools.partial(post, state, payload)) == 200:
            state.chats.mark(NAME, mid, "delivered" if kind == "delivery" else "read")


def _event(state: State, psid: str, item: dict[str, Any]) -> dict[str, Any]:
    assert state.bridge is not None  # noqa: S101 - callers check
    page = state.bridge.tenant.page_id
    now = int(time.time() * 1000)
    return {
        "object": "page",
        "entry": [
            {
                "id": page,
                "time": now,
                "messaging": [
                    {"sender": {"id": psid}, "recipient": {"id": page}, "timestamp": now, **item}
                ],
            }
        ],
    }


async def post(state: State, payload: dict[str, Any]) -> int:
    assert state.bridge is not None  # noqa: S101 - callers check
    return await state.post_meta(NAME, state.bridge.tenant.messenger_secret, payload)


def inbound(
    state: State,
    user: Persona,
    *,
    text: str = "",
    choice: dict[str, str] | None = None,
    media: StoredMedia | None = None,
) -> tuple[dict[str, Any], str]:
    """The webhook of one user message (a quick reply, a postback), and its mid."""
    mid = f"m_SBXIN{uuid.uuid4().hex}"
    item: dict[str, Any]
    if choice is not None and choice.get("kind") == "postback":
        item = {"postback": {"title": choice["title"], "payload": choice["id"], "mid": mid}}
    elif choice is not None:
        item = {
            "message": {
                "mid": mid,
                "text": choice["title"],
                "quick_reply": {"payload": choice["id"]},
            }
        }
    elif media is not None:
        url = f"{state.base}/media/{media.media_id}"
        item = {
            "message": {"mid": mid, "attachments": [{"type": "image", "payload": {"url": url}}]}
        }
    else:
        item = {"message": {"mid": mid, "text": text}}
    return _event(state, user.user_id, item), mid


def view(body: dict[str, Any]) -> dict[str, Any]:
    """A send's preview: text with quick replies, or a button template's postbacks."""
    message = body.get("message", {})
    if "text" in message:
        choices = [
            {"id": q.get("payload", ""), "title": q.get("title", ""), "kind": "quick_reply"}
            for q in message.get("quick_replies", [])
        ]
        return {
            "form": "quick replies" if choices else "text",
            "text": message["text"],
            "choices": choices,
        }
    attachment = message.get("attachment", {})
    payload = attachment.get("payload", {})
    if attachment.get("type") == "template":
        choices = [
            {
                "id": b.get("payload", ""),
                "title": b.get("title", ""),
                "url": b.get("url", ""),
                "kind": "postback",
            }
            for b in payload.get("buttons", [])
        ]
        return {"form": "button template", "text": payload.get("text", ""), "choices": choices}
    return {
        "form": attachment.get("type", "message"),
        "text": "",
        "media": attachment.get("type", ""),
    }
