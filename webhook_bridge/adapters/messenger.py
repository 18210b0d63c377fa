"""Messenger Platform webhooks -> InboundEvents."""

from __future__ import annotations

from typing import Any

from chat.v1 import common_pb2, ingest_service_pb2
from webhook_bridge.adapters import (
    MAX_PARTS,
    MalformedPayloadError,
    Parsed,
    as_dict,
    as_list,
    entry,
    number,
    set_time,
    text,
    time_of,
    token,
)

CHANNEL = common_pb2.CHANNEL_TYPE_MESSENGER
_MEDIA_TYPES = {
    "image": "image/*",
    "video": "video/*",
    "audio": "audio/*",
    "file": "application/octet-stream",
}


def parse(payload: Any) -> Parsed:
    """Every messaging item of every entry; echoes of the page's own messages are ignored."""
    if not isinstance(payload, dict):
        raise MalformedPayloadError("not a webhook object")
    parsed = Parsed()
    if payload.get("object") != "page":
        # Another of the app's products (Instagram, ...): acknowledged, not ours to handle.
        parsed.ignored.append(f"object:{text(payload.get('object'))[:40]}")
        return parsed
    for page_entry in as_list(payload.get("entry")):
        page = text(page_entry.get("id"))
        for item in as_list(page_entry.get("messaging")):
            with entry(parsed, "messaging") as own:
                _item(own, item, page)
    return parsed


def _item(parsed: Parsed, item: dict[str, Any], page: str) -> None:
    sender = text(as_dict(item.get("sender")).get("id"))
    if not sender:
        parsed.ignored.append("no-sender")
        return
    base = {
        "channel": CHANNEL,
        "platform_user_id": sender,
        "channel_conversation_id": sender,  # replies go to the PSID
        "platform_account_id": page,
    }
    millis = item.get("timestamp")
    if "message" in item:
        _message(parsed, as_dict(item.get("message")), base, millis)
    elif "postback" in item:
        postback = as_dict(item.get("postback"))
        event_id = text(postback.get("mid")) or f"postback:{sender}:{token(millis)}"
        reply = common_pb2.InteractiveReply(
            selected_id=text(postback.get("payload"))[:256], title=text(postback.get("title"))
        )
        _add(parsed, base, millis, event_id, message=_inbound(event_id, interactive_reply=reply))
    elif "delivery" in item:
        _receipt(parsed, base, millis, as_dict(item.get("delivery")), delivered=True)
    elif "read" in item:
        _receipt(parsed, base, millis, as_dict(item.get("read")), delivered=False)
    else:
        kinds = [text(key) for key in item if key not in ("sender", "recipient", "timestamp")]
        parsed.ignored.append(f"messaging:{(kinds or ['unknown'])[0][:40]}")


def _message(parsed: Parsed, message: dict[str, Any], base: dict[str, Any], millis: object) -> None:
    if message.get("is_echo"):
        parsed.ignored.append("echo")  # the page's own message: never answer ourselves
        return
    mid = text(message.get("mid"))
    reply_to = text(as_dict(message.get("reply_to")).get("mid"))
    quick_reply = as_dict(message.get("quick_reply"))
    if quick_reply:
        reply = common_pb2.InteractiveReply(
            selected_id=text(quick_reply.get("payload"))[:256], title=text(message.get("text"))
        )
        _add(parsed, base, millis, mid, message=_inbound(mid, reply_to, interactive_reply=reply))
        return
    if "text" in message:
        body = common_pb2.TextContent(text=text(message.get("text")))
        _add(parsed, base, millis, mid, message=_inbound(mid, reply_to, text=body))
        return
    attachments = as_list(message.get("attachments"))
    if not attachments:
        parsed.ignored.append("message:empty")
    if len(attachments) > MAX_PARTS:
        parsed.rejected.append("message:too-many-parts")
        return
    for index, attachment in enumerate(attachments):
        # One event per attachment; the first keeps the message id.
        event_id = mid if index == 0 else f"{mid}:{index}"
        content = _attachment(attachment)
        if content is None:
            parsed.ignored.append(f"attachment:{text(attachment.get('type'))[:40]}")
            continue
        _add(parsed, base, millis, event_id, message=_inbound(event_id, reply_to, **content))


def _attachment(attachment: dict[str, Any]) -> dict[str, Any] | None:
    kind = text(attachment.get("type"))
    payload = as_dict(attachment.get("payload"))
    if kind == "location":
        coordinates = as_dict(payload.get("coordinates"))
        return {
            "location": common_pb2.LocationContent(
                latitude=number(coordinates.get("lat")),
                longitude=number(coordinates.get("long")),
                name=text(attachment.get("title"))[:1000],
            )
        }
    mime = _MEDIA_TYPES.get(kind)
    if mime is None or not text(payload.get("url")):
        return None
    return {
        "media": common_pb2.MediaContent(platform_media_id=text(payload.get("url")), mime_type=mime)
    }


def _receipt(
    parsed: Parsed,
    base: dict[str, Any],
    millis: object,
    body: dict[str, Any],
    *,
    delivered: bool,
) -> None:
    watermark = body.get("watermark")
    raw_mids = body.get("mids")
    mids = [text(m) for m in raw_mids if isinstance(m, str)] if isinstance(raw_mids, list) else []
    report = ingest_service_pb2.StatusReport(
        status=common_pb2.DELIVERY_STATUS_DELIVERED
        if delivered
        else common_pb2.DELIVERY_STATUS_READ,
        platform_message_ids=mids,
    )
    # The watermark covers every message sent before it, named or not.
    when = time_of(watermark, per_second=1000)
    if when is not None:
        report.watermark_time.CopyFrom(when)
    kind = "delivery" if delivered else "read"
    event_id = f"{kind}:{base['platform_user_id']}:{token(watermark)}:{','.join(mids)}"[:256]
    _add(parsed, base, millis, event_id, status=report)


def _inbound(mid: str, reply_to: str = "", **content: Any) -> ingest_service_pb2.InboundMessage:
    return ingest_service_pb2.InboundMessage(
        platform_message_id=mid,
        content=common_pb2.Content(**content),
        reply_to_platform_message_id=reply_to,
    )


def _add(parsed: Parsed, base: dict[str, Any], millis: object, event_id: str, **kind: Any) -> None:
    event = ingest_service_pb2.InboundEvent(platform_event_id=event_id, **base, **kind)
    if isinstance(millis, int | float):  # milliseconds (a string is no Messenger time)
        set_time(event, millis, per_second=1000)
    parsed.events.append(event)
