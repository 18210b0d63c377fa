"""Bot Framework activities from Microsoft Teams -> InboundEvents."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
from typing import Any

from chat.v1 import common_pb2, ingest_service_pb2
from webhook_bridge.adapters import (
    MAX_NAME_CHARS,
    MAX_PARTS,
    MalformedPayloadError,
    Parsed,
    as_dict,
    as_list,
    text,
)

CHANNEL = common_pb2.CHANNEL_TYPE_TEAMS
READ_RECEIPT = "application/vnd.microsoft.readReceipt"
CARD_ACTION = "adaptiveCard/action"
_MENTION = re.compile(r"<at>.*?</at>", re.DOTALL)
_FILE_INFO = "application/vnd.microsoft.teams.file.download.info"


def parse(activity: Any) -> Parsed:
    """One activity per request."""
    if not isinstance(activity, dict) or not isinstance(activity.get("type"), str):
        raise MalformedPayloadError("not a Bot Framework activity")
    parsed = Parsed()
    kind = text(activity["type"])
    sender = as_dict(activity.get("from"))
    user = text(sender.get("id"))
    if kind not in ("message", "invoke", "typing", "event") or not user:
        parsed.ignored.append(f"activity:{kind[:40]}")
        return parsed
    base: dict[str, Any] = {
        "channel": CHANNEL,
        "platform_user_id": user,
        "user_display_name": text(sender.get("name"), MAX_NAME_CHARS),
        "channel_conversation_id": text(as_dict(activity.get("conversation")).get("id")),
        "platform_account_id": text(as_dict(activity.get("recipient")).get("id")),
        "service_url": text(activity.get("serviceUrl")),
    }
    activity_id = text(activity.get("id"))
    if kind == "typing":
        _add(parsed, activity, f"typing:{activity_id or user}", base, typing={"typing": True})
    elif kind == "event":
        if activity.get("name") != READ_RECEIPT:
            parsed.ignored.append(f"event:{text(activity.get('name'))[:60]}")
            return parsed
        last_read = text(as_dict(activity.get("value")).get("lastReadMessageId"))
        report = ingest_service_pb2.StatusReport(
            status=common_pb2.DELIVERY_STATUS_READ, platform_message_ids=[last_read]
        )
        _add(parsed, activity, f"read:{user}:{last_read}", base, status=report)
    elif kind == "invoke":
        if activity.get("name") != CARD_ACTION:
            parsed.ignored.append(f"invoke:{text(activity.get('name'))[:60]}")
            return parsed
        action = as_dict(as_dict(activity.get("value")).get("action"))
        data = as_dict(action.get("data"))
        selected = text(action.get("verb")) or text(data.get("id")) or _compact(data)
        reply = common_pb2.InteractiveReply(
            selected_id=selected[:256], title=text(action.get("title"))[:1024]
        )
        _message(parsed, activity, activity_id, base, interactive_reply=reply)
    else:
        _messages(parsed, activity, activity_id, base)
    return parsed


def _messages(
    parsed: Parsed, activity: dict[str, Any], activity_id: str, base: dict[str, Any]
) -> None:
    value = activity.get("value")
    if isinstance(value, dict) and value:  # an Adaptive Card Action.Submit
        selected = text(value.get("id")) or text(value.get("action")) or _compact(value)
        reply = common_pb2.InteractiveReply(
            selected_id=selected[:256], title=text(activity.get("text"))[:1024]
        )
        _message(parsed, activity, activity_id, base, interactive_reply=reply)
        return
    contents: list[dict[str, Any]] = []
    body = _MENTION.sub("", text(activity.get("text"))).strip()
    if body:
        contents.append({"text": common_pb2.TextContent(text=body)})
    for attachment in as_list(activity.get("attachments")):
        media = _attachment(attachment)
        if media is not None:
            contents.append({"media": media})
    if not contents:
        parsed.ignored.append("message:empty")
    if len(contents) > MAX_PARTS:
        parsed.rejected.append("message:too-many-parts")
        return
    for index, content in enumerate(contents):
        event_id = activity_id if index == 0 else f"{activity_id}:{index}"
        _message(parsed, activity, event_id, base, **content)


def _attachment(attachment: dict[str, Any]) -> common_pb2.MediaContent | None:
    kind = text(attachment.get("contentType"))
    name = text(attachment.get("name"))[:255].replace("/", "_")
    if kind == _FILE_INFO:
        url = text(as_dict(attachment.get("content")).get("downloadUrl"))
        return common_pb2.MediaContent(platform_media_id=url, file_name=name) if url else None
    if kind.startswith(("image/", "video/", "audio/", "application/pdf")):
        url = text(attachment.get("contentUrl"))
        if url:
            return common_pb2.MediaContent(
                platform_media_id=url, mime_type=kind[:255], file_name=name
            )
    return None  # text/html renderings of the text, cards, and the like


def _message(
    parsed: Parsed, activity: dict[str, Any], event_id: str, base: dict[str, Any], **content: Any
) -> None:
    message = ingest_service_pb2.InboundMessage(
        platform_message_id=event_id,
        content=common_pb2.Content(**content),
        reply_to_platform_message_id=text(activity.get("replyToId")),
    )
    _add(parsed, activity, event_id, base, message=message)


def _add(
    parsed: Parsed, activity: dict[str, Any], event_id: str, base: dict[str, Any], **kind: Any
) -> None:
    event = ingest_service_pb2.InboundEvent(platform_event_id=event_id[:256], **base, **kind)
    raw = text(activity.get("timestamp"))
    if raw:
        with contextlib.suppress(ValueError, OverflowError, OSError):
            event.event_time.FromDatetime(dt.datetime.fromisoformat(raw.replace("Z", "+00:00")))
    parsed.events.append(event)


def _compact(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)
