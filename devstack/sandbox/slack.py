"""Slack Web API: chat.postMessage, the external file upload (reserve, upload, complete),
files.info and auth.test; the Events API and interactivity requests a user's messages and
button clicks arrive as. Slack has no delivery or read receipts: a message is sent or not."""

from __future__ import annotations

import time
import urllib.parse
import uuid
from typing import Any

from aiohttp import web

from devstack.sandbox import checks
from devstack.sandbox.core import State, compact, request_body
from devstack.sandbox.errors import checked
from devstack.sandbox.media import StoredMedia
from devstack.sandbox.panel import show
from devstack.sandbox.personas import Persona
from devstack.sandbox.signing import slack_headers

NAME = "slack"
TEAM_ID = "T0SANDBOX"


def add_routes(app: web.Application, state: State) -> None:
    async def record(request: web.Request, api: str) -> Any:
        body = await request_body(request, api)
        state.record(request, api, body)
        return body

    async def post_message(request: web.Request) -> web.Response:
        body = await record(request, NAME)
        checks.slack(request, state, body)
        channel = str(body.get("channel", ""))
        # Checked before a fault is taken: a refused send does not use up the page's fault.
        preview = checked(NAME, lambda: view(body), "the blocks", slack_error="invalid_blocks")
        ts = f"{time.time():.6f}"
        response, status, answer = await state.answer_send(
            platform=NAME,
            recipient=channel,
            success={"ok": True, "channel": channel, "ts": ts},
            send=True,
        )
        # Slack has no receipts: a message is sent or not.
        state.settle_send(
            NAME,
            channel,
            sent=status == 200 and bool(answer.get("ok")),
            platform_id=ts,
            view=preview,
            refusal=f"{status} {answer}",
        )
        return response

    async def auth_test(request: web.Request) -> web.Response:
        state.record(request, "slack-health", {})
        status, body, headers = await state.faults.answer(
            NAME, "health", {"ok": True, "team_id": TEAM_ID, "user_id": "U0SBXBOT"}, send=False
        )
        return web.json_response(body, status=status, headers=headers)

    async def reserve(request: web.Request) -> web.Response:
        body = await record(request, "slack-files")
        file_id = f"F{uuid.uuid4().hex[:10].upper()}"
        return web.json_response(
            {
                "ok": True,
                "upload_url": f"{state.base}/upload/{file_id}",
                "file_id": file_id,
                "filename": body.get("filename", ""),
            }
        )

    async def upload(request: web.Request) -> web.Response:
        data = await request.read()
        state.record(request, "slack-upload", {"size": len(data)})
        return web.Response(text=f"OK - {len(data)}")

    async def complete(request: web.Request) -> web.Response:
        body = await record(request, "slack-files")
        return web.json_response({"ok": True, "files": body.get("files", [])})

    async def files_info(request: web.Request) -> web.Response:
        show(request, NAME)
        stored = state.media.files.get(request.query.get("file", ""))
        if stored is None:
            return web.json_response({"ok": False, "error": "file_not_found"})
        url = f"{state.base}/media/{stored.media_id}"
        return web.json_response({"ok": True, "file": _file(stored, url)})

    app.router.add_post("/api/chat.postMessage", post_message)
    app.router.add_post("/api/auth.test", auth_test)
    app.router.add_post("/api/files.getUploadURLExternal", reserve)
    app.router.add_post("/upload/{file_id}", upload)
    app.router.add_post("/api/files.completeUploadExternal", complete)
    app.router.add_get("/api/files.info", files_info)


def _file(stored: StoredMedia, url: str) -> dict[str, Any]:
    return {
        "id": stored.media_id,
        "name": stored.file_name,
        "mimetype": stored.mime_type,
        "size": len(stored.data),
        "url_private_download": url,
    }


async def post(state: State, payload: dict[str, Any]) -> int:
    """An event as JSON to the events URL; a click as a form to the interactivity URL."""
    assert state.bridge is not None  # noqa: S101 - callers check
    if payload.get("type") == "block_actions":
        body = urllib.parse.urlencode({"payload": compact(payload).decode()}).encode()
        content_type, path = "application/x-www-form-urlencoded", "/interactivity"
    else:
        body, content_type, path = compact(payload), "application/json", ""
    headers = {
        "Content-Type": content_type,
        **slack_headers(state.bridge.tenant.slack_secret, body),
    }
    return await state.post_webhook(NAME, path, body, headers)


def inbound(
    state: State,
    user: Persona,
    *,
    text: str = "",
    choice: dict[str, str] | None = None,
    media: StoredMedia | None = None,
) -> tuple[dict[str, Any], str]:
    """The request of one user message (its ts) or button click (its action's id)."""
    now = time.time()
    ts = f"{now:.6f}"
    if choice is not None:
        action = {
            "type": "button",
            "action_id": choice["id"],
            "block_id": "choices",
            "text": {"type": "plain_text", "text": choice["title"]},
            "value": choice["id"],
            "action_ts": ts,
        }
        payload: dict[str, Any] = {
            "type": "block_actions",
            "user": {"id": user.user_id, "name": user.name},
            "team": {"id": TEAM_ID},
            "channel": {"id": user.address},
            "container": {
                "type": "message",
                "message_ts": choice.get("reply_to", ""),
                "channel_id": user.address,
            },
            "trigger_id": f"{int(now)}.{uuid.uuid4().hex[:12]}",
            "actions": [action],
        }
        return payload, f"action:{payload['trigger_id']}"
    event: dict[str, Any] = {
        "type": "message",
        "channel": user.address,
        "channel_type": "im",
        "user": user.user_id,
        "text": text,
        "ts": ts,
        "event_ts": ts,
    }
    if media is not None:
        event |= {
            "subtype": "file_share",
            "files": [_file(media, f"{state.base}/media/{media.media_id}")],
        }
    payload = {
        "token": "sandbox",
        "team_id": TEAM_ID,
        "api_app_id": "A0SANDBOX",
        "type": "event_callback",
        "event_id": f"Ev{uuid.uuid4().hex[:12].upper()}",
        "event_time": int(now),
        "event": event,
    }
    return payload, ts


def view(body: dict[str, Any]) -> dict[str, Any]:
    """A send's preview: section blocks' text and the actions blocks' buttons."""
    blocks = body.get("blocks") or []
    texts = [b["text"]["text"] for b in blocks if b.get("type") == "section" and "text" in b]
    choices = [
        {
            "id": e.get("value") or e.get("action_id", ""),
            "title": e["text"]["text"],
            "url": e.get("url", ""),
            "kind": "button",
        }
        for b in blocks
        if b.get("type") == "actions"
        for e in b.get("elements", [])
    ]
    if not blocks:
        return {"form": "text", "text": body.get("text", "")}
    return {"form": "blocks", "text": "\n".join(texts) or body.get("text", ""), "choices": choices}
