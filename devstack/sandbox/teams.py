"""Bot Framework connector for Teams: the client-credentials token endpoint and the
conversation's activities (the OpenID metadata and keys are in ``signing``); the activities a
user's messages, card choices and read receipts arrive as, each with a Bot Framework token.
Teams has no delivery receipts: a message is sent, then read."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import uuid
from typing import Any

from aiohttp import web

from devstack.sandbox import checks
from devstack.sandbox.core import State, compact, request_body
from devstack.sandbox.errors import checked
from devstack.sandbox.media import StoredMedia
from devstack.sandbox.personas import Persona

NAME = "teams"
READ_RECEIPT = "application/vnd.microsoft.readReceipt"
ADAPTIVE_CARD = "application/vnd.microsoft.card.adaptive"


def add_routes(app: web.Application, state: State) -> None:
    async def token(request: web.Request) -> web.Response:
        body = await request_body(request, "teams-token")
        state.record(request, "teams-token", body)
        status, answer, headers = await state.faults.answer(
            NAME,
            "token",
            {"token_type": "Bearer", "access_token": "teams-app-token", "expires_in": 3600},
            send=False,
        )
        return web.json_response(answer, status=status, headers=headers)

    async def activities(request: web.Request) -> web.Response:
        body = await request_body(request, NAME)
        state.record(request, NAME, body)
        checks.teams(request, body)
        conversation = request.match_info["conversation"]
        typing = body.get("type") == "typing"
        # Checked before a fault is taken: a refused send does not use up the page's fault.
        preview = None if typing else checked(NAME, lambda: view(body), "the activity")
        activity_id = f"1{uuid.uuid4().int % 10**12:012d}"
        response, status, _ = await state.answer_send(
            platform=NAME,
            recipient=conversation,
            success={"id": activity_id},
            send=not typing,
        )
        if typing:
            return response
        state.settle_send(
            NAME,
            conversation,
            sent=status == 200,
            platform_id=activity_id,
            view=preview,
            refusal=str(status),
            receipts=lambda: _read(state, conversation, activity_id),
        )
        return response

    app.router.add_post("/token", token)
    app.router.add_post("/v3/conversations/{conversation}/activities", activities)
    app.router.add_post("/v3/conversations/{conversation}/activities/{reply_to}", activities)


def service_url(state: State) -> str:
    return f"{state.base}/"


async def _read(state: State, conversation: str, activity_id: str) -> None:
    """The read receipt Teams sends when the user has seen the message."""
    await asyncio.sleep(state.receipt_delay * 2)
    user = state.teams_users.get(conversation, "")
    if not user:
        return  # no one the sandbox knows wrote here: no one to read it
    receipt = {
        **_activity(state, user, "", conversation),
        "type": "event",
        "name": READ_RECEIPT,
        "value": {"lastReadMessageId": activity_id},
    }
    if await state.post_receipt(functools.partial(post, state, receipt)) == 200:
        state.chats.mark(NAME, activity_id, "read")


def _activity(state: State, user_id: str, name: str, conversation: str) -> dict[str, Any]:
    assert state.bridge is not None  # noqa: S101 - callers check
    return {
        "id": f"sbx-{uuid.uuid4().hex}",
        "timestamp": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
        "serviceUrl": service_url(state),
        "channelId": "msteams",
        "from": {"id": user_id, "name": name},
        "conversation": {"conversationType": "personal", "id": conversation},
        "recipient": {"id": f"28:{state.bridge.tenant.teams_app_id}", "name": "bot"},
        "channelData": {"tenant": {"id": "sandbox-tenant"}},
    }


async def post(state: State, activity: dict[str, Any]) -> int:
    assert state.bridge is not None  # noqa: S101 - callers check
    token = state.keys.token(
        app_id=state.bridge.tenant.teams_app_id, service_url=service_url(state)
    )
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    return await state.post_webhook(NAME, "", compact(activity), headers)


def inbound(
    state: State,
    user: Persona,
    *,
    text: str = "",
    choice: dict[str, str] | None = None,
    media: StoredMedia | None = None,
) -> tuple[dict[str, Any], str]:
    """The activity of one user message (a card's Action.Submit), and its id."""
    # Who reads in this conversation: its read receipt comes from them.
    state.teams_users[user.address] = user.user_id
    activity = {**_activity(state, user.user_id, user.name, user.address), "type": "message"}
    if choice is not None:
        activity |= {"text": choice["title"], "value": {"id": choice["id"]}}
    else:
        activity |= {"textFormat": "plain", "text": text}
    if media is not None:
        url = f"{state.base}/media/{media.media_id}"
        activity["attachments"] = [
            {"contentType": media.mime_type, "contentUrl": url, "name": media.file_name}
        ]
    return activity, str(activity["id"])


def view(body: dict[str, Any]) -> dict[str, Any]:
    """A send's preview: markdown text, or an Adaptive Card's text blocks and actions."""
    for attachment in body.get("attachments", []):
        if attachment.get("contentType") != ADAPTIVE_CARD:
            return {
                "form": "attachment",
                "text": body.get("text", ""),
                "media": attachment.get("contentType", ""),
            }
        card = attachment.get("content", {})
        blocks = [b.get("text", "") for b in card.get("body", []) if b.get("type") == "TextBlock"]
        choices = [
            {
                "id": a.get("data", {}).get("id", ""),
                "title": a.get("title", ""),
                "url": a.get("url", ""),
                "kind": "submit",
            }
            for a in card.get("actions", [])
        ]
        return {"form": "Adaptive Card", "text": "\n".join(blocks), "choices": choices}
    return {"form": "text", "text": body.get("text", "")}
