"""Slack Events API and interactivity payloads -> InboundEvents."""

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
    set_time,
    text,
)

CHANNEL = common_pb2.CHANNEL_TYPE_SLACK
#: Message subtypes that are someone's message; every other subtype (edits, deletions,
#: joins, bot messages) is acknowledged without effect.
_USER_SUBTYPES = ("", "file_share", "thread_broadcast")


def parse_event(payload: Any) -> Parsed:
    """An event_callback (one event per request; Slack does not batch)."""
    if not isinstance(payload, dict):
        raise MalformedPayloadError("not a Slack event")
    parsed = Parsed()
    if payload.get("type") != "event_callback":
        parsed.ignored.append(f"type:{text(payload.get('type'))[:40]}")
        return parsed
    event = as_dict(payload.get("event"))
    event_id = text(payload.get("event_id"))
    if event.get("type") != "message" or not event_id:
        parsed.ignored.append(f"event:{text(event.get('type'))[:40]}")
        return parsed
    subtype = text(event.get("subtype"))
    if event.get("bot_id") or subtype == "bot_message":
        parsed.ignored.append("bot")  # our own (or another bot's) message: never answer it
        return parsed
    if subtype not in _USER_SUBTYPES or not text(event.get("user")):
        parsed.ignored.append(f"message:{subtype[:40] or 'no-user'}")
        return parsed
    base: dict[str, Any] = {
        "channel": CHANNEL,
        "platform_user_id": text(event.get("user")),
        "channel_conversation_id": text(event.get("channel")),
        "platform_account_id": text(payload.get("team_id")),
    }
    ts = text(event.get("ts"))
    thread = text(event.get("thread_ts"))
    contents: list[common_pb2.Content] = []
    if text(event.get("text")):
        contents.append(
            common_pb2.Content(text=common_pb2.TextContent(text=text(event.get("text"))))
        )
    for file in as_list(event.get("files")):
        contents.append(
            common_pb2.Content(
                media=common_pb2.MediaContent(
                    platform_media_id=text(file.get("id")),
                    mime_type=text(file.get("mimetype"))[:255],
                    file_name=text(file.get("name"))[:255].replace("/", "_"),
                )
            )
        )
    if len(contents) > MAX_PARTS:
        parsed.rejected.append("message:too-many-parts")
        return parsed
    for index, content in enumerate(contents):
        # A message with text and files becomes one event each; the first keeps the id.
        item_id = event_id if index == 0 else f"{event_id}:{index}"
        inbound = ingest_service_pb2.InboundEvent(
            platform_event_id=item_id,
            **base,
            message=ingest_service_pb2.InboundMessage(
                platform_message_id=ts if index == 0 else f"{ts}:{index}",
                content=content,
                reply_to_platform_message_id=thread if thread != ts else "",
            ),
        )
        set_time(inbound, payload.get("event_time"))
        parsed.events.append(inbound)
    if not contents:
        parsed.ignored.append("message:empty")
    return parsed


def parse_interaction(payload: Any) -> Parsed:
    """A block_actions interaction: each action is the user's choice."""
    if not isinstance(payload, dict):
        raise MalformedPayloadError("not a Slack interaction")
    parsed = Parsed()
    if payload.get("type") != "block_actions":
        parsed.ignored.append(f"interaction:{text(payload.get('type'))[:40]}")
        return parsed
    user = text(as_dict(payload.get("user")).get("id"))
    container = as_dict(payload.get("container"))
    channel = text(as_dict(payload.get("channel")).get("id")) or text(container.get("channel_id"))
    if not user or not channel:
        raise MalformedPayloadError("block_actions without a user or channel")
    actions = as_list(payload.get("actions"))
    if len(actions) > MAX_PARTS:  # Slack sends the one action clicked
        parsed.rejected.append("interaction:too-many-parts")
        return parsed
    for action in actions:
        with entry(parsed, "action") as own:
            _action(own, payload, action, user=user, channel=channel, container=container)
    return parsed


def _action(
    parsed: Parsed,
    payload: dict[str, Any],
    action: dict[str, Any],
    *,
    user: str,
    channel: str,
    container: dict[str, Any],
) -> None:
    """One block action: the user's choice."""
    action_ts = text(action.get("action_ts"))
    selected = as_dict(action.get("selected_option"))
    value = (
        text(action.get("value")) or text(selected.get("value")) or text(action.get("action_id"))
    )
    title = text(as_dict(action.get("text")).get("text")) or text(
        as_dict(selected.get("text")).get("text")
    )
    event_id = (
        f"action:{text(payload.get('trigger_id'))}:{text(action.get('action_id'))}:{action_ts}"
    )
    event = ingest_service_pb2.InboundEvent(
        platform_event_id=event_id[:256],
        channel=CHANNEL,
        platform_user_id=user,
        channel_conversation_id=channel,
        platform_account_id=text(as_dict(payload.get("team")).get("id")),
        message=ingest_service_pb2.InboundMessage(
            platform_message_id=event_id[:256],
            content=common_pb2.Content(
                interactive_reply=common_pb2.InteractiveReply(
                    selected_id=value[:256], title=title[:1024]
                )
            ),
            reply_to_platform_message_id=text(container.get("message_ts")),
        ),
    )
    set_time(event, action_ts)
    parsed.events.append(event)
