"""Conversation export as JSON Lines or CSV, streamed in chunks of whole lines.

Messages are read from a cursor in batches and written out as they come, so memory stays
constant whatever the conversation's size.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

from google.protobuf import json_format

from chat.v1 import common_pb2

CHUNK_BYTES = 64 * 1024
CSV_HEADER = (
    "id",
    "sequence",
    "create_time",
    "direction",
    "type",
    "sender_id",
    "text",
    "delivery_status",
)


@dataclass(frozen=True, slots=True)
class Chunk:
    """Whole lines of the file, and how many messages the file holds so far."""

    data: bytes
    message_count: int


def jsonl_line(message: common_pb2.Message) -> bytes:
    """One message as a JSON object on one line (the contract's JSON mapping)."""
    document = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return (json.dumps(document, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def csv_line(row: tuple[str, ...]) -> bytes:
    """One RFC 4180 CSV record."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(row)
    return buffer.getvalue().encode()


def csv_row(message: common_pb2.Message) -> tuple[str, ...]:
    """The CSV columns of one message."""
    return (
        message.id,
        str(message.sequence),
        message.create_time.ToJsonString(),
        common_pb2.MessageDirection.Name(message.direction),
        common_pb2.MessageType.Name(message.type),
        message.sender_id,
        _text_of(message.content),
        common_pb2.DeliveryStatus.Name(message.delivery_status),
    )


def _text_of(content: common_pb2.Content) -> str:
    kind = content.WhichOneof("kind")
    if kind == "text":
        return content.text.text
    if kind == "location":
        place = " ".join(filter(None, (content.location.name, content.location.address)))
        return f"{content.location.latitude},{content.location.longitude} {place}".strip()
    if kind == "interactive":
        return content.interactive.body
    if kind == "interactive_reply":
        return content.interactive_reply.title or content.interactive_reply.selected_id
    if kind == "media":
        return content.media.caption
    return ""


async def chunks(
    messages: AsyncIterator[common_pb2.Message], *, csv_format: bool
) -> AsyncIterator[Chunk]:
    """The export file in chunks of at most CHUNK_BYTES, each made of whole lines."""
    buffer = bytearray(csv_line(CSV_HEADER) if csv_format else b"")
    count = 0
    async for message in messages:
        line = csv_line(csv_row(message)) if csv_format else jsonl_line(message)
        if buffer and len(buffer) + len(line) > CHUNK_BYTES:
            yield Chunk(bytes(buffer), count)
            buffer.clear()
        buffer += line
        count += 1
    if buffer or count == 0:
        yield Chunk(bytes(buffer), count)
