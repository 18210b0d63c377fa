"""The page where a person chats as a platform user, and the small JSON API behind it: the
state (chats, the panel's exchanges, the armed faults) by long poll, sending as a user, and
arming a fault. Bad input is a 400 with the reason."""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from devstack.sandbox import messenger, slack, teams, whatsapp
from devstack.sandbox.core import NO_ANSWER, UNREACHABLE, WEBHOOK_TIMEOUT, State
from devstack.sandbox.faults import KINDS
from devstack.sandbox.media import StoredMedia, sample_png
from devstack.sandbox.panel import Handler
from devstack.sandbox.personas import LABELS, PERSONAS, PLATFORMS, Persona, persona

STATIC = Path(__file__).with_name("static")
#: The only files /static/ serves: a name is looked up here, never joined to a path.
STATIC_FILES = {"sandbox.js": "text/javascript", "sandbox.css": "text/css"}
#: The hosts the page answers to: a page of another site that a DNS name rebinds to 127.0.0.1
#: still sends its own name as Host, and is refused.
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]"})
#: The page's routes under these prefixes, and "/" (the platforms' APIs are called by the
#: service, which may name the sandbox by any host).
PAGE_PREFIXES = ("/static/", "/sandbox/")


class PlatformModule(Protocol):
    """What each platform's module offers the page: a user's webhook, and posting it."""

    def inbound(
        self,
        state: State,
        user: Persona,
        *,
        text: str = "",
        choice: dict[str, str] | None = None,
        media: StoredMedia | None = None,
    ) -> tuple[dict[str, Any], str]: ...

    async def post(self, state: State, payload: dict[str, Any]) -> int: ...


PLATFORM_MODULES: dict[str, PlatformModule] = {
    "whatsapp": whatsapp,
    "messenger": messenger,
    "slack": slack,
    "teams": teams,
}
#: The long poll answers at the latest after this long, changed or not.
POLL_SECONDS = 20.0


def add_routes(app: web.Application, state: State) -> None:
    async def index(_: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def static(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        kind = STATIC_FILES.get(name)
        if kind is None:  # "../x" or "/etc/x" (aiohttp decodes %2F into the name) too
            raise web.HTTPNotFound(text=f"no file {name}")
        return web.FileResponse(STATIC / name, headers={"Content-Type": kind})

    async def current(request: web.Request) -> web.Response:
        try:
            after = int(request.query.get("after", "0"))
            seen = int(request.query.get("seen", "0"))
        except ValueError:
            return _bad("after and seen are numbers")
        if request.query.get("wait") == "1":
            await state.recorder.changed_after(after, POLL_SECONDS)
        return web.json_response(
            {
                "version": state.recorder.version,
                "connected": state.bridge is not None,
                "platforms": [
                    {"id": p, "label": LABELS[p], "users": [vars_of(u) for u in PERSONAS[p]]}
                    for p in PLATFORMS
                ],
                "chats": state.chats.snapshot(),
                "exchanges": state.recorder.panel(seen),
                "faults": state.faults.armed,
                "fault_kinds": list(KINDS),
            },
            dumps=_dumps,
        )

    async def send(request: web.Request) -> web.Response:
        try:
            form = _object(await _json(request))
            platform = str(form.get("platform", ""))
            user = persona(platform, str(form.get("user", "")))
            text = str(form.get("text", ""))[:4096]
            choice = _choice(form.get("choice"))
            media = _media(state, form.get("image"))
        except ValueError as exc:
            return _bad(str(exc))
        if not (text.strip() or choice or media):
            return _bad("say something: text, a choice or an image")
        if state.bridge is None:
            return web.json_response({"error": "the sandbox has no bridge to send to"}, status=409)
        status = await send_as(state, platform, user, text=text, choice=choice, media=media)
        if status == NO_ANSWER:
            reason = f"the bridge did not answer within {WEBHOOK_TIMEOUT.total:.0f} s"
            return web.json_response({"error": reason}, status=504)
        if status == UNREACHABLE:
            return web.json_response({"error": "the bridge could not be reached"}, status=502)
        return web.json_response({"bridge_status": status})

    async def arm(request: web.Request) -> web.Response:
        try:
            form = _object(await _json(request))
            state.faults.arm(str(form.get("platform", "")), str(form.get("fault", "")))
        except ValueError as exc:
            return _bad(str(exc))
        state.recorder.touch()
        return web.json_response({"faults": state.faults.armed})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/sandbox/state", current)
    app.router.add_post("/sandbox/send", send)
    app.router.add_post("/sandbox/faults", arm)


async def send_as(
    state: State,
    platform: str,
    user: Persona,
    *,
    text: str = "",
    choice: dict[str, str] | None = None,
    media: StoredMedia | None = None,
) -> int:
    """Post what ``user`` did as the platform's webhook; the bridge's status."""
    shown = choice["title"] if choice else text
    image = f"/media/{media.media_id}" if media is not None else ""
    module: PlatformModule = PLATFORM_MODULES[platform]
    payload, platform_id = module.inbound(state, user, text=text, choice=choice, media=media)
    entry = state.chats.add(
        platform, user.address, "user", shown, platform_id=platform_id, image=image
    )
    status = await module.post(state, payload)
    if status == 200:
        state.chats.mark(platform, entry.platform_id, "sent")
    else:
        said = f"the bridge answered {status}" if status > 0 else "the bridge did not answer"
        state.chats.add(platform, user.address, "note", said)
    return status


def vars_of(user: Persona) -> dict[str, str]:
    return {"key": user.key, "name": user.name, "user_id": user.user_id, "address": user.address}


@web.middleware
async def local_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The page's routes answer only a Host naming this machine (DNS rebinding), and its
    POSTs only JSON (a form or text/plain POST is what another site can make a browser send
    without asking: CSRF)."""
    if request.path == "/" or request.path.startswith(PAGE_PREFIXES):
        host = (request.host or "").lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if name not in LOCAL_HOSTS:
            return web.json_response(
                {"error": f"the sandbox page answers 127.0.0.1 or localhost, not {host!r}"},
                status=421,
            )
        if request.method == "POST" and request.content_type != "application/json":
            return web.json_response(
                {"error": f"Content-Type must be application/json, not {request.content_type}"},
                status=415,
            )
    return await handler(request)


async def _json(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        raise ValueError("the body is not JSON") from None


def _object(raw: Any) -> dict[str, Any]:
    # A JSON body that is not an object is bad input like any other (ValueError, a 400).
    if not isinstance(raw, dict):
        raise ValueError("a JSON object is expected")  # noqa: TRY004 - reported as a 400
    return raw


def _choice(raw: Any) -> dict[str, str] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not raw.get("id") or not raw.get("title"):
        raise ValueError("a choice has an id and a title")
    return {k: str(raw.get(k, ""))[:256] for k in ("id", "title", "kind", "reply_to")}


def _media(state: State, raw: Any) -> StoredMedia | None:
    if raw is None:
        return None
    if raw == "sample":
        return state.media.put(sample_png(), "image/png", "sandbox-sample.png")
    if not isinstance(raw, dict):
        raise ValueError('an image is "sample" or {name, type, data (base64)}')  # noqa: TRY004 - a 400
    mime = str(raw.get("type", ""))
    if not mime.startswith("image/"):
        raise ValueError(f"not an image: {mime or 'no type'}")
    try:
        data = base64.b64decode(str(raw.get("data", "")), validate=True)
    except binascii.Error:
        raise ValueError("the image data is not base64") from None
    return state.media.put(data, mime, str(raw.get("name", "image"))[:255] or "image")


def _bad(reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=400)


def _dumps(value: Any) -> str:
    # A recorded form may hold an uploaded file's field: shown by its name, not refused.
    return json.dumps(value, default=str)
