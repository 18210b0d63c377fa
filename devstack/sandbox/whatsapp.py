"""WhatsApp Cloud API: messages (and mark-read with typing), media upload and lookup; the
webhooks a user's messages and the message statuses arrive as."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
import uuid
from typing import Any

from aiohttp import web

from devstack.sandbox import checks
from devstack.sandbox.core import State, request_body
from devstack.sandbox.errors import Refused, checked
from devstack.sandbox.media import StoredMedia
from devstack.sandbox.panel import Handler, show
from devstack.sandbox.personas import Persona
from devstack.sandbox.recorder import is_action

NAME = "whatsapp"
VERSION = "{version:v[0-9.]+}"


def add_routes(app: web.Application, state: State, *, messenger_send: Handler) -> None:
    """``messenger_send``: Messenger's Send API, which ``/{page-id}/messages`` is too."""

    async def messages(request: web.Request) -> web.StreamResponse:
        body = await request_body(request, NAME)
        if "recipient" in body and "messaging_product" not in body:
            return await messenger_send(request)  # a Messenger send to /{page-id}/messages
        state.record(request, NAME, body)
        recipient = str(body.get("to", ""))
        action = is_action(body)
        # Checked before a fault is taken: a refused send does not use up the page's fault.
        checks.whatsapp(request, state, body, action=action)
        preview = None if action else checked(NAME, lambda: view(body), "the message")
        wamid = f"wamid.out-{uuid.uuid4().hex}"
        # Mark-read (with typing) is answered {"success": true}; a send with the message's id.
        success: dict[str, Any] = (
            {"success": True}
            if action
            else {
                "messaging_product": "whatsapp",
                "contacts": [{"input": recipient, "wa_id": recipient}],
                "messages": [{"id": wamid}],
            }
        )
        response, status, _ = await state.answer_send(
            platform=NAME, recipient=recipient, success=success, send=not action
        )
        if action:
            if body.get("status") == "read":
                user = _sender_of(state, str(body.get("message_id", "")))
                if user:
                    state.chats.read_by_bot(NAME, user, str(body["message_id"]))
        else:
            failure = state.faults.failure_after(NAME) if status == 200 else None
            state.settle_send(
                NAME,
                recipient,
                sent=status == 200,
                platform_id=wamid,
                view=preview,
                refusal=str(status),
                receipts=lambda: _statuses(state, recipient, wamid, failure),
            )
            if failure is not None:
                note = f"the platform reported the send failed: {failure['code']}"
                state.chats.add(NAME, recipient, "note", note)
        return response

    async def upload(request: web.Request) -> web.Response:
        checks.bearer(request, "whatsapp-media")
        form = await request.post()
        upload = form.get("file")
        if not isinstance(upload, web.FileField):
            raise Refused("whatsapp-media", "file is required")
        data = upload.file.read()
        body = {
            "messaging_product": form.get("messaging_product"),
            "type": form.get("type"),
            "size": len(data),
            "filename": upload.filename,
        }
        state.record(request, "whatsapp-media", body)
        stored = checked(
            "whatsapp-media",
            lambda: state.media.put(
                data, str(form.get("type") or upload.content_type), upload.filename
            ),
            "the file",
        )
        return web.json_response({"id": stored.media_id})

    async def lookup(request: web.Request) -> web.Response:
        """GET /{id}: a media id gives its download URL; a phone number id (or ``me``) is the
        cheapest authenticated call, the service's health check."""
        stored = state.media.files.get(request.match_info["object_id"])
        if stored is not None:
            show(request, NAME)
            return web.json_response(
                {
                    "messaging_product": "whatsapp",
                    "url": f"{state.base}/media/{stored.media_id}",
                    "mime_type": stored.mime_type,
                    "sha256": hashlib.sha256(stored.data).hexdigest(),
                    "file_size": len(stored.data),
                    "id": stored.media_id,
                }
            )
        state.record(request, "graph-health", {})
        answer = await state.faults.answer(
            "whatsapp", "health", {"ok": True, "id": "1"}, send=False
        )
        return web.json_response(answer[1], status=answer[0], headers=answer[2])

    app.router.add_get(f"/{VERSION}/{{object_id}}", lookup)
    app.router.add_post(f"/{VERSION}/{{phone}}/messages", messages)
    app.router.add_post(f"/{VERSION}/{{phone}}/media", upload)


def _sender_of(state: State, wamid: str) -> str:
    found = state.chats.find(NAME, wamid)
    return found[0] if found is not None else ""


async def _statuses(
    state: State, recipient: str, wamid: str, failure: dict[str, Any] | None = None
) -> None:
    """sent, delivered, read: what the phone reports, each a signed webhook; or ``failed``
    with the error when the message could not be delivered."""
    for status in ("failed",) if failure is not None else ("sent", "delivered", "read"):
        await asyncio.sleep(state.receipt_delay)
        item: dict[str, Any] = {
            "id": wamid,
            "status": status,
            "timestamp": str(int(time.time())),
            "recipient_id": recipient,
        }
        if failure is not None:
            item["errors"] = [failure]
        payload = _envelope(state, {"statuses": [item]})
        if await state.post_receipt(functools.partial(post, state, payload)) == 200:
            state.chats.mark(NAME, wamid, status)


def _envelope(state: State, value: dict[str, Any]) -> dict[str, Any]:
    assert state.bridge is not None  # noqa: S101 - callers check
    number = state.bridge.tenant.phone_number_id
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "WABA-SANDBOX",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15550009999",
                                "phone_number_id": number,
                            },
                            **value,
                        },
                    }
                ],
            }
        ],
    }


async def post(state: State, payload: dict[str, Any]) -> int:
    assert state.bridge is not None  # noqa: S101 - callers check
    return await state.post_meta(NAME, state.bridge.tenant.whatsapp_secret, payload)


def inbound(
    state: State,
    user: Persona,
    *,
    text: str = "",
    choice: dict[str, str] | None = None,
    media: StoredMedia | None = None,
) -> tuple[dict[str, Any], str]:
    """The webhook of one user message, and the message's wamid."""
    wamid = f"wamid.SBXIN{uuid.uuid4().hex}"
    message: dict[str, Any] = {
        "from": user.user_id,
        "id": wamid,
        "timestamp": str(int(time.time())),
    }
    if choice is not None:
        kind = "list_reply" if choice.get("kind") == "row" else "button_reply"
        message |= {
            "type": "interactive",
            "interactive": {"type": kind, kind: {"id": choice["id"], "title": choice["title"]}},
        }
        if choice.get("reply_to"):
            message["context"] = {"from": "15550009999", "id": choice["reply_to"]}
    elif media is not None:
        image = {
            "mime_type": media.mime_type,
            "sha256": hashlib.sha256(media.data).hexdigest(),
            "id": media.media_id,
        }
        message |= {"type": "image", "image": {**image, **({"caption": text} if text else {})}}
    else:
        message |= {"type": "text", "text": {"body": text}}
    contacts = [{"profile": {"name": user.name}, "wa_id": user.user_id}]
    return _envelope(state, {"contacts": contacts, "messages": [message]}), wamid


def view(body: dict[str, Any]) -> dict[str, Any]:
    """A send's preview: text, reply buttons or list rows as choices."""
    kind = body.get("type", "")
    if kind == "text":
        return {"form": "text", "text": body["text"].get("body", "")}
    if kind == "interactive":
        interactive = body["interactive"]
        action = interactive.get("action", {})
        header = interactive.get("header", {}).get("text", "")
        text = interactive.get("body", {}).get("text", "")
        if interactive.get("type") == "button":
            choices = [
                {"id": b["reply"]["id"], "title": b["reply"]["title"], "kind": "button"}
                for b in action.get("buttons", [])
            ]
            return {"form": "reply buttons", "header": header, "text": text, "choices": choices}
        rows = [
            {"id": r["id"], "title": r["title"], "kind": "row"}
            for section in action.get("sections", [])
            for r in section.get("rows", [])
        ]
        return {
            "form": f"list ({action.get('button', 'Choose')})",
            "header": header,
            "text": text,
            "choices": rows,
        }
    if kind == "location":
        place = body["location"]
        return {"form": "location", "text": f"{place.get('name', '')} {place.get('address', '')}"}
    media = body.get(kind, {}) if isinstance(body.get(kind), dict) else {}
    return {"form": kind or "message", "text": media.get("caption", ""), "media": kind}
