"""What each platform checks before it takes a send (PLATFORMS.md): a bearer token (the
tenant's own when the sandbox knows it), the tenant's ids, the required fields and the
limits. A failed check raises ``Refused``, answered in the platform's own words."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from devstack.sandbox.core import State
from devstack.sandbox.errors import Refused, checked

WHATSAPP_TEXT = 4096
WHATSAPP_CAPTION = 1024
WHATSAPP_BUTTONS = 3
WHATSAPP_BUTTON_TITLE = 20
WHATSAPP_BUTTON_ID = 256
WHATSAPP_LIST_ROWS = 10
MESSENGER_TEXT = 2000
MESSENGER_QUICK_REPLIES = 13
MESSENGER_BUTTON_TITLE = 20
MESSENGER_PAYLOAD = 1000
MESSENGER_ACTIONS = ("typing_on", "typing_off", "mark_seen")
SLACK_BLOCKS = 50
#: Bot Framework refuses an activity over about 28 KB (413 MessageSizeTooBig).
TEAMS_ACTIVITY_BYTES = 28 * 1024


def bearer(request: web.Request, api: str, known: str = "") -> str:
    """The request's bearer token; none (or another than the tenant's ``known``) is refused."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Refused(
            api, "An access token is required", slack_error="not_authed", code=190, status=401
        )
    if known and token.strip() != known:
        raise Refused(
            api, "Invalid OAuth access token", slack_error="invalid_auth", code=190, status=401
        )
    return token.strip()


def whatsapp(request: web.Request, state: State, body: dict[str, Any], *, action: bool) -> None:
    # A field of an unexpected type is a malformed request like a missing one.
    checked("whatsapp", lambda: _whatsapp(request, state, body, action=action), "the message")


def messenger(request: web.Request, state: State, body: dict[str, Any]) -> None:
    checked("messenger", lambda: _messenger(request, state, body), "the message")


def _whatsapp(request: web.Request, state: State, body: dict[str, Any], *, action: bool) -> None:
    tenant = state.bridge.tenant if state.bridge is not None else None
    bearer(request, "whatsapp", tenant.whatsapp_token if tenant else "")
    number = request.match_info.get("phone", "")
    if tenant is not None and tenant.phone_number_id and number != tenant.phone_number_id:
        raise _no_object("whatsapp", number)
    if body.get("messaging_product") != "whatsapp":
        raise Refused("whatsapp", "The parameter messaging_product is required.")
    if action:
        if not body.get("message_id"):
            raise Refused("whatsapp", "The parameter message_id is required.")
        return
    if not body.get("to"):
        raise Refused("whatsapp", "The parameter to is required.")
    kind = str(body.get("type", "text"))
    if kind == "text" and len(str(_field(body, "text", "body"))) > WHATSAPP_TEXT:
        raise Refused("whatsapp", f"Param text['body'] must be at most {WHATSAPP_TEXT} characters")
    if len(str(_dict(body.get(kind)).get("caption", ""))) > WHATSAPP_CAPTION:
        raise Refused("whatsapp", f"The caption must be at most {WHATSAPP_CAPTION} characters")
    if kind == "interactive":
        _whatsapp_interactive(body.get("interactive"))


def _whatsapp_interactive(interactive: Any) -> None:
    if not isinstance(interactive, dict):
        raise Refused("whatsapp", "The parameter interactive is required.")
    action = _dict(interactive.get("action"))
    if interactive.get("type") == "button":
        buttons = action.get("buttons") or []
        if not 1 <= len(buttons) <= WHATSAPP_BUTTONS:
            raise Refused("whatsapp", f"buttons must have 1 to {WHATSAPP_BUTTONS} items")
        for button in buttons:
            reply = _dict(_dict(button).get("reply"))
            if len(str(reply.get("title", ""))) > WHATSAPP_BUTTON_TITLE:
                raise Refused("whatsapp", f"A button title is at most {WHATSAPP_BUTTON_TITLE}")
            if len(str(reply.get("id", ""))) > WHATSAPP_BUTTON_ID:
                raise Refused("whatsapp", f"A button id is at most {WHATSAPP_BUTTON_ID}")
    elif interactive.get("type") == "list":
        sections = action.get("sections") or []
        rows = sum(len(_dict(section).get("rows") or []) for section in sections)
        if not 1 <= rows <= WHATSAPP_LIST_ROWS:
            raise Refused("whatsapp", f"A list has 1 to {WHATSAPP_LIST_ROWS} rows")


def _messenger(request: web.Request, state: State, body: dict[str, Any]) -> None:
    tenant = state.bridge.tenant if state.bridge is not None else None
    bearer(request, "messenger", tenant.messenger_token if tenant else "")
    page = request.match_info.get("phone", "me")
    if page != "me" and tenant is not None and tenant.page_id and page != tenant.page_id:
        raise _no_object("messenger", page)
    recipient = body.get("recipient")
    if not isinstance(recipient, dict) or not recipient.get("id"):
        raise Refused("messenger", "The parameter recipient is required")
    if "sender_action" in body:
        if body["sender_action"] not in MESSENGER_ACTIONS:
            choices = ", ".join(MESSENGER_ACTIONS)
            raise Refused("messenger", f"Param sender_action must be one of {choices}")
        return
    message = body.get("message")
    if not isinstance(message, dict) or not (message.get("text") or message.get("attachment")):
        raise Refused("messenger", "The parameter message must have text or an attachment")
    if len(str(message.get("text", ""))) > MESSENGER_TEXT:
        raise Refused("messenger", f"Message text must be at most {MESSENGER_TEXT} characters")
    if len(message.get("quick_replies") or []) > MESSENGER_QUICK_REPLIES:
        raise Refused("messenger", f"At most {MESSENGER_QUICK_REPLIES} quick replies")
    attachment = message.get("attachment")
    if attachment is not None and not _dict(attachment).get("type"):
        raise Refused("messenger", "The parameter message[attachment][type] is required")
    payload = _dict(_dict(attachment).get("payload"))
    for button in payload.get("buttons") or []:
        if not isinstance(button, dict):
            raise Refused("messenger", "Each button must be an object")
        if len(str(button.get("title", ""))) > MESSENGER_BUTTON_TITLE:
            raise Refused("messenger", f"A button title is at most {MESSENGER_BUTTON_TITLE}")
        if len(str(button.get("payload", ""))) > MESSENGER_PAYLOAD:
            raise Refused("messenger", f"A postback payload is at most {MESSENGER_PAYLOAD}")


def slack(request: web.Request, state: State, body: dict[str, Any]) -> None:
    tenant = state.bridge.tenant if state.bridge is not None else None
    bearer(request, "slack", tenant.slack_token if tenant else "")
    if not body.get("channel"):
        raise Refused("slack", "no channel", slack_error="channel_not_found")
    blocks = body.get("blocks")
    if not body.get("text") and not blocks:
        raise Refused("slack", "no text or blocks", slack_error="no_text")
    if blocks is not None and (not isinstance(blocks, list) or len(blocks) > SLACK_BLOCKS):
        raise Refused("slack", "too many blocks", slack_error="invalid_blocks")


def teams(request: web.Request, body: dict[str, Any]) -> None:
    if not request.headers.get("Authorization", "").lower().startswith("bearer "):
        raise Refused("teams", "Authorization has been denied for this request.", status=401)
    if not body.get("type"):
        raise Refused("teams", "The activity has no type.")
    if request.content_length is not None and request.content_length > TEAMS_ACTIVITY_BYTES:
        raise Refused("teams", "The activity is over 28 KB.")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _field(body: dict[str, Any], outer: str, inner: str) -> Any:
    value = body.get(outer)
    if not isinstance(value, dict):
        raise Refused("whatsapp", f"The parameter {outer} is required.")
    return value.get(inner, "")


def _no_object(api: str, object_id: str) -> Refused:
    return Refused(
        api,
        f"Unsupported post request. Object with ID '{object_id}' does not exist, cannot be "
        "loaded due to missing permissions, or does not support this operation",
    )
