"""The socket's frames (docs/web-chat.schema.json, version 1): the client's parsed and
checked, the server's built from the chat server's events."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from google.protobuf.json_format import MessageToDict

from chat.v1 import chat_service_pb2, common_pb2

VERSION = 1
#: A client message id: also the SendMessage request_id, so a resend is stored once.
CLIENT_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
UPLOAD_ID = re.compile(r"^upload-[0-9a-f]{32}$")
MAX_TEXT_CHARS = 4096
MAX_CHOICE_CHARS = 256
CLIENT_TYPES = frozenset({"auth", "send", "typing", "read", "resume", "ping"})

_STATUS = {
    common_pb2.DELIVERY_STATUS_QUEUED: "queued",
    common_pb2.DELIVERY_STATUS_SENT: "sent",
    common_pb2.DELIVERY_STATUS_DELIVERED: "delivered",
    common_pb2.DELIVERY_STATUS_READ: "read",
    common_pb2.DELIVERY_STATUS_FAILED: "failed",
}


class FrameError(Exception):
    """A client frame that is not valid: the socket is closed with 4400 and this reason."""


@dataclass(frozen=True, slots=True)
class ClientFrame:
    """A parsed client frame: its type and its fields."""

    type: str
    fields: dict[str, Any]


def parse(raw: str) -> ClientFrame:
    """A client frame; FrameError with the reason when it is not one."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise FrameError("frame is not JSON") from None
    if not isinstance(data, dict):
        raise FrameError("frame is not a JSON object")
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in CLIENT_TYPES:
        raise FrameError(f"unknown frame type; expected one of {', '.join(sorted(CLIENT_TYPES))}")
    return ClientFrame(type=kind, fields=data)


def sequence(fields: dict[str, Any], name: str) -> int:
    """A non-negative sequence field (0 when absent)."""
    value = fields.get(name, 0)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**53:
        raise FrameError(f"{name} must be a non-negative integer")
    return value


@dataclass(frozen=True, slots=True)
class Send:
    """A checked send frame."""

    client_id: str
    text: str
    upload_id: str
    choice_id: str
    choice_title: str


def send(fields: dict[str, Any]) -> Send:
    """The send frame's fields, checked."""
    client_id = fields.get("client_id")
    if not isinstance(client_id, str) or not CLIENT_ID.match(client_id):
        raise FrameError("send.client_id must be 8 to 64 of A-Z, a-z, 0-9, '_' and '-'")
    text = fields.get("text", "")
    upload_id = fields.get("media_id", "")
    choice = fields.get("choice")
    if not isinstance(text, str) or len(text) > MAX_TEXT_CHARS:
        raise FrameError(f"send.text must be a string of at most {MAX_TEXT_CHARS} characters")
    if not isinstance(upload_id, str) or (upload_id and not UPLOAD_ID.match(upload_id)):
        raise FrameError("send.media_id must be an id the uploads endpoint returned")
    choice_id = choice_title = ""
    if choice is not None:
        if not isinstance(choice, dict):
            raise FrameError("send.choice must be an object with id and title")
        raw_id, raw_title = choice.get("id"), choice.get("title", "")
        if (
            not isinstance(raw_id, str)
            or not isinstance(raw_title, str)
            or not 0 < len(raw_id) <= MAX_CHOICE_CHARS
            or len(raw_title) > MAX_CHOICE_CHARS
        ):
            raise FrameError(f"send.choice id and title: at most {MAX_CHOICE_CHARS} characters")
        choice_id, choice_title = raw_id, raw_title
    if not (text.strip() or upload_id or choice_id):
        raise FrameError("send needs text, media_id or choice")
    return Send(client_id, text, upload_id, choice_id, choice_title)


def message(message: common_pb2.Message) -> dict[str, Any]:
    """A stored message as the widget shows it."""
    frame: dict[str, Any] = {
        "type": "message",
        "sequence": message.sequence,
        "id": message.id,
        "conversation_id": message.conversation_id,
        "direction": "in" if message.direction == common_pb2.MESSAGE_DIRECTION_INBOUND else "out",
        "content": MessageToDict(message.content, preserving_proto_field_name=True),
        "time": message.create_time.ToJsonString(),
    }
    media = frame["content"].get("media")
    if media is not None:
        media.pop("data", None)  # never echo bytes back
    client_id = message.metadata.get("client_id")
    if client_id:
        frame["client_id"] = client_id
    status = _STATUS.get(message.delivery_status)
    if status:
        frame["status"] = status
    return frame


def event(event: chat_service_pb2.StreamConversationEventsResponse) -> dict[str, Any] | None:
    """A stream event as a frame; None for what the widget need not see (its own typing)."""
    kind = event.WhichOneof("event")
    if kind == "message":
        return message(event.message)
    if kind == "typing":
        if event.typing.direction == common_pb2.MESSAGE_DIRECTION_INBOUND:
            return None
        return {"type": "typing", "typing": event.typing.typing}
    if kind == "delivery_status":
        update = event.delivery_status
        return {
            "type": "status",
            "sequence": update.sequence,
            "status": _STATUS.get(update.status, "unknown"),
        }
    if kind == "closed":
        return {"type": "closed", "reason": event.closed.conversation.close_reason}
    return None


def error(code: str, reason: str, **extra: Any) -> dict[str, Any]:
    """An error frame: the socket stays open."""
    return {"type": "error", "code": code, "reason": reason, **extra}
