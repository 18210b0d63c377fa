"""Printing records as a table, JSON, JSON Lines or CSV: tables on a terminal, JSON when the
output goes to a pipe or a file."""

from __future__ import annotations

import csv
import datetime as dt
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.table import Table
from rich.text import Text

from chat.v1 import common_pb2 as common

FORMATS = ("table", "json", "jsonl", "csv")

Record = Message | dict[str, Any] | tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Column:
    """A column of the table and CSV forms: its title and how a record gives its value."""

    title: str
    value: Callable[[Any], object]
    #: Ids are kept on one line (a terminal too narrow for the table then crops them).
    wrap: bool = True


def choose_format(requested: str | None, stream: TextIO | None = None) -> str:
    """The format asked for, else a table on a terminal and JSON elsewhere."""
    if requested:
        return requested
    return "table" if (stream or sys.stdout).isatty() else "json"


def as_json(record: Record) -> Any:
    """A record's JSON form (a message: the API's JSON mapping, enum names, every field)."""
    if isinstance(record, Message):
        return json_format.MessageToDict(record, always_print_fields_with_no_presence=True)
    if isinstance(record, tuple):
        return [as_json(value) if isinstance(value, Message) else value for value in record]
    return {
        key: as_json(value) if isinstance(value, Message) else value
        for key, value in record.items()
    }


def emit(
    records: Sequence[Record],
    columns: Sequence[Column],
    fmt: str,
    *,
    document: Record | None = None,
    out: TextIO | None = None,
) -> None:
    """Print ``records`` in ``fmt``; JSON prints ``document`` when given (the whole response),
    else the list of records."""
    out = out or sys.stdout
    if fmt == "json":
        body = as_json(document) if document is not None else [as_json(r) for r in records]
        out.write(json.dumps(body, indent=2, ensure_ascii=False) + "\n")
    elif fmt == "jsonl":
        for record in records:
            out.write(json.dumps(as_json(record), ensure_ascii=False) + "\n")
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([column.title for column in columns])
        writer.writerows([cell(column.value(record)) for column in columns] for record in records)
    else:
        table = Table(show_edge=False, pad_edge=False, header_style="bold")
        for column in columns:
            table.add_column(column.title, overflow="fold", no_wrap=not column.wrap)
        for record in records:
            # Text, not markup: a message's "[brackets]" are shown as they are.
            table.add_row(*(Text(cell(column.value(record))) for column in columns))
        Console(file=out, soft_wrap=False).print(table)
    out.flush()


class LineWriter:
    """Records printed one at a time, as they arrive (a stream): JSON forms one per line,
    CSV with its header first, a table's form as aligned text lines."""

    def __init__(self, columns: Sequence[Column], fmt: str, out: TextIO | None = None) -> None:
        self._columns = columns
        self._fmt = fmt
        self._out = out or sys.stdout
        self._csv = csv.writer(self._out, lineterminator="\n")
        if fmt == "csv":
            self._csv.writerow([column.title for column in columns])
            self._out.flush()

    def write(self, record: Record) -> None:
        if self._fmt in {"json", "jsonl"}:
            self._out.write(json.dumps(as_json(record), ensure_ascii=False) + "\n")
        elif self._fmt == "csv":
            self._csv.writerow([cell(column.value(record)) for column in self._columns])
        else:
            self._out.write(
                "  ".join(cell(column.value(record)) for column in self._columns) + "\n"
            )
        self._out.flush()


def cell(value: object) -> str:
    """A value as a table or CSV cell."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Timestamp):
        return when(value)
    if isinstance(value, float):
        return f"{value:.2f}".rstrip("0").rstrip(".") if value else "0"
    return str(value)


def when(stamp: Timestamp) -> str:
    """A timestamp in UTC to the second; empty when unset."""
    if not stamp.seconds and not stamp.nanos:
        return ""
    moment = dt.datetime.fromtimestamp(stamp.seconds, tz=dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def short_enum(full: str, prefix: str) -> str:
    """``CHANNEL_TYPE_WEB`` as ``web``."""
    return full.removeprefix(prefix).lower()


def channel_name(value: int) -> str:
    return short_enum(common.ChannelType.Name(value), "CHANNEL_TYPE_")  # type: ignore[arg-type]


def direction_name(value: int) -> str:
    return short_enum(common.MessageDirection.Name(value), "MESSAGE_DIRECTION_")  # type: ignore[arg-type]


def delivery_name(value: int) -> str:
    if value == common.DELIVERY_STATUS_UNSPECIFIED:
        return ""  # inbound messages have no delivery
    return short_enum(common.DeliveryStatus.Name(value), "DELIVERY_STATUS_")  # type: ignore[arg-type]


def conversation_status_name(value: int) -> str:
    return short_enum(common.ConversationStatus.Name(value), "CONVERSATION_STATUS_")  # type: ignore[arg-type]


def content_summary(content: common.Content) -> str:
    """A message's content in one line: the text, or what kind of content it is."""
    kind = content.WhichOneof("kind")
    if kind == "text":
        return " ".join(content.text.text.split())
    if kind == "media":
        media = content.media
        parts = [media.mime_type, media.file_name, media.caption]
        return "[media " + " ".join(p for p in parts if p) + "]"
    if kind == "location":
        place = content.location
        return f"[location {place.latitude:.5f},{place.longitude:.5f}]"
    if kind == "interactive":
        return "[interactive] " + " ".join(content.interactive.body.split())
    if kind == "interactive_reply":
        return "[choice] " + content.interactive_reply.title
    return ""


MESSAGE_COLUMNS: Sequence[Column] = (
    Column("seq", lambda m: m.sequence),
    Column("time", lambda m: m.create_time),
    Column("direction", lambda m: direction_name(m.direction)),
    Column("sender", lambda m: m.sender_id),
    Column("content", lambda m: content_summary(m.content)),
    Column("status", lambda m: delivery_name(m.delivery_status)),
)

CONVERSATION_COLUMNS: Sequence[Column] = (
    Column("id", lambda c: c.id, wrap=False),
    Column("user", lambda c: c.user_id),
    Column("channel", lambda c: channel_name(c.channel)),
    Column("status", lambda c: conversation_status_name(c.status)),
    Column("messages", lambda c: c.message_count),
    Column("last activity", lambda c: c.last_activity_time),
)


def names(values: Iterable[str]) -> str:
    return ", ".join(values)
