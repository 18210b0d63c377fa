"""send, conversations list/show/tail/close, search."""

from __future__ import annotations

import asyncio
import datetime as dt
import mimetypes
from dataclasses import dataclass
from pathlib import Path

import click
from google.protobuf.timestamp_pb2 import Timestamp

from chat.v1 import chat_service_pb2 as chat
from chat.v1 import common_pb2 as common
from chat_client.cli.app import WHEN, App, cli, fmt_of, output_option, pass_app, usage
from chat_client.cli.output import (
    CONVERSATION_COLUMNS,
    MESSAGE_COLUMNS,
    Column,
    LineWriter,
    channel_name,
    content_summary,
    delivery_name,
    direction_name,
    emit,
)
from chat_client.client import ChatClient, new_request_id
from chat_client.errors import ChatError
from chat_client.retry import RETRYABLE_CODES

CHANNELS = {
    channel_name(value): value
    for value in common.ChannelType.values()
    if value != common.CHANNEL_TYPE_UNSPECIFIED
}
STATUSES = {
    name.removeprefix("CONVERSATION_STATUS_").lower(): value
    for name, value in common.ConversationStatus.items()
    if value != common.CONVERSATION_STATUS_UNSPECIFIED
}
CHANNEL = click.Choice(sorted(CHANNELS))
#: Largest media file `send --file` reads (the server's limit).
MEDIA_LIMIT = 20 * 1024 * 1024


def stamp(moment: dt.datetime) -> Timestamp:
    value = Timestamp()
    value.FromDatetime(moment)
    return value


def time_range(since: dt.datetime | None, until: dt.datetime | None) -> common.TimeRange | None:
    if since is None and until is None:
        return None
    span = common.TimeRange()
    if since is not None:
        span.start_time.CopyFrom(stamp(since))
    if until is not None:
        span.end_time.CopyFrom(stamp(until))
    return span


def location(text: str) -> common.LocationContent:
    try:
        latitude, longitude = (float(part) for part in text.split(","))
    except ValueError:
        raise usage(f"--location {text!r}: LAT,LNG expected, e.g. 52.37,4.89") from None
    return common.LocationContent(latitude=latitude, longitude=longitude)


def media(path: Path) -> common.MediaContent:
    try:
        size = path.stat().st_size
        if size > MEDIA_LIMIT:
            raise usage(f"--file {path}: {size} bytes, over the 20 MiB the server takes")
        data = path.read_bytes()
    except OSError as exc:
        raise usage(f"--file {path}: {exc.strerror or exc}") from None
    mime, _ = mimetypes.guess_type(path.name)
    return common.MediaContent(data=data, mime_type=mime or "", file_name=path.name)


SENT_COLUMNS = (
    Column("conversation", lambda m: m.conversation_id, wrap=False),
    *MESSAGE_COLUMNS,
)


@cli.command(short_help="Send a message as an end user; print it and the replies.")
@click.argument("text", required=False)
@click.option("--user", "user_id", required=True, help="The end user's id.")
@click.option("--channel", type=CHANNEL, default="web", show_default=True)
@click.option(
    "--file",
    "media_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Send this file as media (TEXT becomes its caption).",
)
@click.option("--location", "where", metavar="LAT,LNG", help="Send a location.")
@click.option("--conversation", "conversation_id", help="Continue this conversation.")
@click.option("--request-id", help="Idempotency key (default: a new one; a retry reuses it).")
@output_option
@pass_app
def send(
    app: App,
    text: str | None,
    user_id: str,
    channel: str,
    media_file: Path | None,
    where: str | None,
    conversation_id: str | None,
    request_id: str | None,
    fmt: str | None,
) -> None:
    """Send TEXT (or --file media, or --location LAT,LNG) from --user; prints the stored
    message and the bot's replies."""
    if media_file is not None and where is not None:
        raise usage("give --file or --location, not both")
    if where is not None and text:
        raise usage("TEXT goes with --file (as its caption), not with --location")
    if media_file is not None:
        item = media(media_file)
        item.caption = text or ""
        content = common.Content(media=item)
    elif where is not None:
        content = common.Content(location=location(where))
    elif text:
        content = common.Content(text=common.TextContent(text=text))
    else:
        raise usage("nothing to send: give TEXT, --file or --location")
    request = chat.SendMessageRequest(
        request_id=request_id or new_request_id(),
        user_id=user_id,
        channel=CHANNELS[channel],
        conversation_id=conversation_id or "",
        content=content,
    )
    response = app.run(lambda client: client.call(client.chat.SendMessage, request))
    emit([response.message, *response.replies], SENT_COLUMNS, fmt_of(fmt), document=response)


@cli.group()
def conversations() -> None:
    """List, show, follow and close conversations."""


@conversations.command("list")
@click.option("--user", "user_id", help="Only this end user's.")
@click.option("--channel", type=CHANNEL, help="Only this channel's.")
@click.option("--status", type=click.Choice(sorted(STATUSES)), help="Only those in this status.")
@click.option("--since", type=WHEN, help="Active since (ISO 8601, or 15m, 2h, 7d ago).")
@click.option("--until", type=WHEN, help="Active until.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@output_option
@pass_app
def list_conversations(
    app: App,
    user_id: str | None,
    channel: str | None,
    status: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    limit: int,
    fmt: str | None,
) -> None:
    """Conversations, newest first."""
    request = chat.ListConversationsRequest(
        page_size=min(limit, 100),
        user_id=user_id or "",
        channel=CHANNELS[channel] if channel else 0,  # type: ignore[arg-type]
        status=STATUSES[status] if status else 0,  # type: ignore[arg-type]
        last_activity_time_range=time_range(since, until),
    )

    async def walk(client: ChatClient) -> list[common.Conversation]:
        pages = client.pages(
            client.chat.ListConversations, request, lambda p: p.conversations, limit=limit
        )
        return [item async for item in pages]

    emit(app.run(walk), CONVERSATION_COLUMNS, fmt_of(fmt))


@conversations.command("show")
@click.argument("conversation_id")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many messages.")
@output_option
@pass_app
def show(app: App, conversation_id: str, limit: int | None, fmt: str | None) -> None:
    """A conversation's messages, in order."""
    request = chat.ListMessagesRequest(conversation_id=conversation_id, page_size=100)

    async def walk(client: ChatClient) -> list[common.Message]:
        pages = client.pages(client.chat.ListMessages, request, lambda p: p.messages, limit=limit)
        return [item async for item in pages]

    emit(app.run(walk), MESSAGE_COLUMNS, fmt_of(fmt))


@conversations.command("close")
@click.argument("conversation_id")
@click.option("--reason", default="", help="Why (kept on the conversation).")
@output_option
@pass_app
def close(app: App, conversation_id: str, reason: str, fmt: str | None) -> None:
    """Close a conversation and end its session."""
    request = chat.CloseConversationRequest(
        conversation_id=conversation_id, reason=reason, request_id=new_request_id()
    )
    response = app.run(lambda client: client.call(client.chat.CloseConversation, request))
    emit([response.conversation], CONVERSATION_COLUMNS, fmt_of(fmt), document=response)


EVENT_COLUMNS = (
    Column("time", lambda e: e.event_time),
    Column("event", lambda e: e.WhichOneof("event") or ""),
    Column("seq", lambda e: event_sequence(e) or ""),
    Column("what", lambda e: event_summary(e)),  # noqa: PLW0108 - defined below
)


def event_sequence(event: chat.StreamConversationEventsResponse) -> int:
    kind = event.WhichOneof("event")
    if kind == "message":
        return event.message.sequence
    if kind == "delivery_status":
        return event.delivery_status.sequence
    return 0


def event_summary(event: chat.StreamConversationEventsResponse) -> str:
    kind = event.WhichOneof("event")
    if kind == "message":
        message = event.message
        arrow = "<" if message.direction == common.MESSAGE_DIRECTION_INBOUND else ">"
        return f"{arrow} {message.sender_id}: {content_summary(message.content)}"
    if kind == "typing":
        typing = event.typing
        return f"{typing.participant_id} {'is typing' if typing.typing else 'stopped typing'}"
    if kind == "delivery_status":
        update = event.delivery_status
        return f"{update.message_id} {delivery_name(update.status)}"
    if kind == "closed":
        return "closed " + event.closed.conversation.close_reason
    return ""


@dataclass
class Tail:
    """Where a tail is: the last message sequence it printed, so a reconnect resumes after it."""

    conversation_id: str
    position: int
    count: int | None
    seen: int = 0
    failures: int = 0

    async def follow(self, client: ChatClient, writer: LineWriter) -> None:
        """Print events until the conversation closes or ``count`` messages were printed."""
        request = chat.StreamConversationEventsRequest(
            conversation_id=self.conversation_id, after_sequence=self.position
        )
        async for event in client.stream(client.chat.StreamConversationEvents, request):
            self.failures = 0
            kind = event.WhichOneof("event")
            if kind == "message":
                if event.message.sequence <= self.position:
                    continue  # already printed before a reconnect
                self.position = event.message.sequence
                self.seen += 1
            writer.write(event)
            if kind == "closed" or (self.count is not None and self.seen >= self.count):
                return


@conversations.command("tail")
@click.argument("conversation_id")
@click.option("--from-start", is_flag=True, help="Replay the whole conversation first.")
@click.option(
    "--after", type=click.IntRange(min=0), help="Replay the messages after this sequence."
)
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many messages.")
@output_option
@pass_app
def tail(
    app: App,
    conversation_id: str,
    from_start: bool,
    after: int | None,
    count: int | None,
    fmt: str | None,
) -> None:
    """Follow a conversation live: its messages, typing, delivery status and closing.

    Reconnects after a dropped connection, resuming after the last message seen (nothing
    missed, nothing twice). Ends when the conversation closes; Ctrl-C stops it.
    """
    writer = LineWriter(EVENT_COLUMNS, fmt_of(fmt))

    async def follow(client: ChatClient) -> None:
        position = 0 if from_start else after
        if position is None:
            got = await client.call(
                client.chat.GetConversation,
                chat.GetConversationRequest(conversation_id=conversation_id),
            )
            position = got.conversation.last_sequence
        state = Tail(conversation_id=conversation_id, position=position, count=count)
        while True:
            try:
                await state.follow(client, writer)
            except ChatError as error:
                state.failures += 1
                if error.code not in RETRYABLE_CODES or state.failures > 8:
                    raise
                await asyncio.sleep(min(5.0, 0.2 * 2**state.failures))
            else:
                return

    try:
        app.run(follow)
    except KeyboardInterrupt:
        return  # Ctrl-C is how a tail ends


@cli.command(short_help="Search messages by text.")
@click.argument("query")
@click.option("--conversation", "conversation_id", help="Only in this conversation.")
@click.option("--channel", type=CHANNEL, help="Only on this channel.")
@click.option("--since", type=WHEN, help="Created since (ISO 8601, or 15m, 2h, 7d ago).")
@click.option("--until", type=WHEN, help="Created until.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@output_option
@pass_app
def search(
    app: App,
    query: str,
    conversation_id: str | None,
    channel: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    limit: int,
    fmt: str | None,
) -> None:
    """Messages whose text contains QUERY (literal, case-insensitive), newest first."""
    request = chat.SearchMessagesRequest(
        query=query,
        conversation_id=conversation_id or "",
        channel=CHANNELS[channel] if channel else 0,  # type: ignore[arg-type]
        create_time_range=time_range(since, until),
        page_size=min(limit, 100),
    )

    async def walk(client: ChatClient) -> list[common.Message]:
        pages = client.pages(client.chat.SearchMessages, request, lambda p: p.messages, limit=limit)
        return [item async for item in pages]

    emit(app.run(walk), SEARCH_COLUMNS, fmt_of(fmt))


SEARCH_COLUMNS = (
    Column("conversation", lambda m: m.conversation_id, wrap=False),
    Column("seq", lambda m: m.sequence),
    Column("time", lambda m: m.create_time),
    Column("channel", lambda m: channel_name(m.channel)),
    Column("direction", lambda m: direction_name(m.direction)),
    Column("content", lambda m: content_summary(m.content)),
)
