"""A platform's inbound event (IngestEvents): what makes one invalid, and whose conversation
it belongs to."""

from __future__ import annotations

from chat.v1 import common_pb2, ingest_service_pb2
from server.domain.times import TIME_PROBLEM, time_problem

MAX_ID_CHARS = 256
_STATUSES = (
    common_pb2.DELIVERY_STATUS_SENT,
    common_pb2.DELIVERY_STATUS_DELIVERED,
    common_pb2.DELIVERY_STATUS_READ,
    common_pb2.DELIVERY_STATUS_FAILED,
)


#: Platforms where one user talks to the bot in several chats (direct messages, channels):
#: there a conversation is one user in one chat.
_MULTI_CHAT = (common_pb2.CHANNEL_TYPE_SLACK, common_pb2.CHANNEL_TYPE_TEAMS)


def conversation_user(event: ingest_service_pb2.InboundEvent) -> str:
    """Whose conversation an event belongs to: the platform user, or on Slack and Teams the
    user in that chat ("<chat id>/<user id>"), so replies go back to the chat they came from."""
    if event.channel in _MULTI_CHAT and event.channel_conversation_id:
        return f"{event.channel_conversation_id}/{event.platform_user_id}"
    return event.platform_user_id


def check_event(event: ingest_service_pb2.InboundEvent) -> str:
    """Everything that is wrong with the event, "; "-separated ("" when nothing)."""
    kind = event.WhichOneof("kind")
    problems = [
        (
            not event.platform_event_id or len(event.platform_event_id) > MAX_ID_CHARS,
            f"platform_event_id: required, at most {MAX_ID_CHARS} characters",
        ),
        (
            event.channel in (common_pb2.CHANNEL_TYPE_UNSPECIFIED, common_pb2.CHANNEL_TYPE_WEB)
            or event.channel not in common_pb2.ChannelType.values(),
            "channel: a platform channel",
        ),
        (
            not event.platform_user_id or len(event.platform_user_id) > MAX_ID_CHARS,
            f"platform_user_id: required, at most {MAX_ID_CHARS} characters",
        ),
        (kind is None, "one of message, status, typing is required"),
        (
            kind == "message"
            and (
                not event.channel_conversation_id
                or len(event.channel_conversation_id) > MAX_ID_CHARS
            ),
            f"channel_conversation_id: required, at most {MAX_ID_CHARS} characters",
        ),
        (
            kind == "message" and len(event.message.platform_message_id) > MAX_ID_CHARS,
            f"message.platform_message_id: at most {MAX_ID_CHARS} characters",
        ),
        (
            kind == "status" and event.status.status not in _STATUSES,
            "status.status: SENT, DELIVERED, READ or FAILED",
        ),
        (
            kind == "status" and len(event.status.platform_message_ids) > 1000,
            "status.platform_message_ids: at most 1000",
        ),
        (
            event.HasField("event_time") and bool(time_problem(event.event_time)),
            f"event_time: {TIME_PROBLEM}",
        ),
        (
            kind == "status"
            and event.status.HasField("watermark_time")
            and bool(time_problem(event.status.watermark_time)),
            f"status.watermark_time: {TIME_PROBLEM}",
        ),
    ]
    return "; ".join(description for wrong, description in problems if wrong)
