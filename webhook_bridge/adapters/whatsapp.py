"""WhatsApp Business Cloud API webhooks -> InboundEvents."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chat.v1 import common_pb2, ingest_service_pb2
from webhook_bridge.adapters import (
    MAX_NAME_CHARS,
    MalformedPayloadError,
    Parsed,
    as_dict,
    as_list,
    entry,
    number,
    set_time,
    text,
    token,
)

CHANNEL = common_pb2.CHANNEL_TYPE_WHATSAPP
_MEDIA = ("image", "document", "audio", "video", "sticker")
_STATUSES = {
    "sent": common_pb2.DELIVERY_STATUS_SENT,
    "delivered": common_pb2.DELIVERY_STATUS_DELIVERED,
    "read": common_pb2.DELIVERY_STATUS_READ,
    "played": common_pb2.DELIVERY_STATUS_READ,  # a voice message was listened to
    "failed": common_pb2.DELIVERY_STATUS_FAILED,
}


def parse(payload: Any) -> Parsed:
    """Every message and status of every entry and change."""
    if not isinstance(payload, dict):
        raise MalformedPayloadError("not a webhook object")
    parsed = Parsed()
    if payload.get("object") != "whatsapp_business_account":
        parsed.ignored.append(f"object:{text(payload.get('object'))[:40]}")
        return parsed
    for account_entry in as_list(payload.get("entry")):
        for change in as_list(account_entry.get("changes")):
            value = change.get("value")
            if change.get("field") != "messages" or not isinstance(value, dict):
                parsed.ignored.append(f"field:{text(change.get('field'))[:40]}")
                continue
            account = text(as_dict(value.get("metadata")).get("phone_number_id"))
            names = {
                text(contact.get("wa_id")): text(
                    as_dict(contact.get("profile")).get("name"), MAX_NAME_CHARS
                )
                for contact in as_list(value.get("contacts"))
            }
            for message in as_list(value.get("messages")):
                with entry(parsed, "message") as own:
                    _message(own, message, account, names)
            for status in as_list(value.get("statuses")):
                with entry(parsed, "status") as own:
                    _status(own, status, account)
            for _error in as_list(value.get("errors")):
                parsed.ignored.append("error")
    return parsed


def _message(parsed: Parsed, message: dict[str, Any], account: str, names: dict[str, str]) -> None:
    kind = text(message.get("type"))
    content = _content(kind, message)
    if content is None:
        parsed.ignored.append(f"message:{kind[:40]}")
        return
    sender = text(message.get("from"))
    message_id = text(message.get("id"))
    event = ingest_service_pb2.InboundEvent(
        platform_event_id=message_id,
        channel=CHANNEL,
        platform_user_id=sender,
        user_display_name=names.get(sender, ""),
        channel_conversation_id=sender,  # replies go to the sender's number
        platform_account_id=account,
        message=ingest_service_pb2.InboundMessage(
            platform_message_id=message_id,
            content=content,
            reply_to_platform_message_id=text(as_dict(message.get("context")).get("id")),
        ),
    )
    set_time(event, message.get("timestamp"))
    parsed.events.append(event)


def _content(kind: str, message: dict[str, Any]) -> common_pb2.Content | None:
    """The content of a message type; None for types without one (reaction, order, system,
    unsupported, and types yet to come)."""
    body = as_dict(message.get(kind))
    if kind in _MEDIA:
        return _media(body)
    build = _BUILDERS.get(kind)
    return build(body, message) if build else None


def _text(body: dict[str, Any], _: dict[str, Any]) -> common_pb2.Content:
    return common_pb2.Content(text=common_pb2.TextContent(text=text(body.get("body"))))


def _media(body: dict[str, Any]) -> common_pb2.Content:
    return common_pb2.Content(
        media=common_pb2.MediaContent(
            platform_media_id=text(body.get("id")),
            mime_type=text(body.get("mime_type"))[:255],
            caption=text(body.get("caption"))[:1024],
            file_name=text(body.get("filename"))[:255].replace("/", "_"),
            sha256=text(body.get("sha256"))[:64],
        )
    )


def _location(body: dict[str, Any], _: dict[str, Any]) -> common_pb2.Content:
    return common_pb2.Content(
        location=common_pb2.LocationContent(
            latitude=number(body.get("latitude")),
            longitude=number(body.get("longitude")),
            name=text(body.get("name"))[:1000],
            address=text(body.get("address"))[:1000],
        )
    )


def _button(body: dict[str, Any], _: dict[str, Any]) -> common_pb2.Content:
    """A template's quick-reply button."""
    return _reply(text(body.get("payload")) or text(body.get("text")), text(body.get("text")))


def _interactive(body: dict[str, Any], _: dict[str, Any]) -> common_pb2.Content | None:
    choice = as_dict(body.get("button_reply")) or as_dict(body.get("list_reply"))
    if not choice:
        return None
    return _reply(text(choice.get("id")), text(choice.get("title")))


def _contacts(_: dict[str, Any], message: dict[str, Any]) -> common_pb2.Content:
    cards = []
    for contact in as_list(message.get("contacts")):
        name = text(as_dict(contact.get("name")).get("formatted_name"))
        phones = [text(phone.get("phone")) for phone in as_list(contact.get("phones"))]
        cards.append(" ".join(filter(None, [name, *phones])))
    shared = "; ".join(filter(None, cards))
    return common_pb2.Content(text=common_pb2.TextContent(text=f"Shared contact: {shared}"))


_BUILDERS: dict[str, Callable[[dict[str, Any], dict[str, Any]], common_pb2.Content | None]] = {
    "text": _text,
    "location": _location,
    "button": _button,
    "interactive": _interactive,
    "contacts": _contacts,
}


def _reply(selected_id: str, title: str) -> common_pb2.Content:
    return common_pb2.Content(
        interactive_reply=common_pb2.InteractiveReply(selected_id=selected_id, title=title)
    )


def _status(parsed: Parsed, status: dict[str, Any], account: str) -> None:
    name = text(status.get("status"))
    new = _STATUSES.get(name)
    message_id = text(status.get("id"))
    if new is None or not message_id:
        parsed.ignored.append(f"status:{name[:40]}")
        return
    report = ingest_service_pb2.StatusReport(status=new, platform_message_ids=[message_id])
    errors = as_list(status.get("errors"))
    if new == common_pb2.DELIVERY_STATUS_FAILED and errors:
        code = errors[0].get("code")
        retryable = code in (130429, 131056, 4, 80007)
        report.error.CopyFrom(
            common_pb2.PlatformError(
                code=token(code),
                message=text(errors[0].get("title") or errors[0].get("message"))[:500],
                retryable=retryable,
            )
        )
    event = ingest_service_pb2.InboundEvent(
        # The same wamid carries each status in turn: the status names the event.
        platform_event_id=f"{message_id}:{name}",
        channel=CHANNEL,
        platform_user_id=text(status.get("recipient_id")),
        channel_conversation_id=text(status.get("recipient_id")),
        platform_account_id=account,
        status=report,
    )
    set_time(event, status.get("timestamp"))
    parsed.events.append(event)
