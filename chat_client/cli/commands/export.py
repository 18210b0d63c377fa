"""export: a conversation to a JSON Lines or CSV file, written atomically."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import click
from rich.console import Console
from rich.filesize import decimal
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from chat.v1 import chat_service_pb2 as chat
from chat_client.cli.app import App, cli, fmt_of, output_option, pass_app, usage
from chat_client.cli.output import Column, emit
from chat_client.client import ChatClient

FORMATS = {"jsonl": chat.EXPORT_FORMAT_JSONL, "csv": chat.EXPORT_FORMAT_CSV}


def progress_bar(*columns: object) -> Progress:
    """A progress bar on stderr, shown only when stderr is a terminal: stdout stays clean
    for what a pipe reads."""
    console = Console(stderr=True)
    return Progress(
        *columns,  # type: ignore[arg-type]
        console=console,
        disable=not console.is_terminal,
        transient=False,
    )


def format_of(out: Path, requested: str | None) -> str:
    if requested:
        return requested
    suffix = out.suffix.lower().lstrip(".")
    if suffix in FORMATS:
        return suffix
    raise usage(
        f"{out}: cannot tell the format from the extension; use .jsonl or .csv, or --format"
    )


@cli.command("export", short_help="Export a conversation to a .jsonl or .csv file.")
@click.argument("conversation_id")
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The file to write (replaced only once the export is complete).",
)
@click.option(
    "--format",
    "file_format",
    type=click.Choice(sorted(FORMATS)),
    help="jsonl or csv (default: from --out's extension).",
)
@output_option
@pass_app
def export(
    app: App, conversation_id: str, out: Path, file_format: str | None, fmt: str | None
) -> None:
    """Export a conversation's messages to a file, with a progress bar (messages and bytes).

    The export is written to a temporary file next to --out and renamed over it only when
    complete: an interrupted or failed export never leaves a half-written file under the
    final name, and rerunning it is safe.
    """
    chosen = format_of(out, file_format)
    directory = out.resolve().parent
    if not directory.is_dir():
        raise usage(f"--out {out}: no directory {directory}")

    async def download(client: ChatClient) -> tuple[int, int]:
        got = await client.call(
            client.chat.GetConversation,
            chat.GetConversationRequest(conversation_id=conversation_id),
        )
        total = got.conversation.message_count or None
        request = chat.ExportConversationRequest(
            conversation_id=conversation_id,
            format=FORMATS[chosen],
        )
        written = messages = 0
        with (
            atomic_file(out) as sink,
            progress_bar(
                TextColumn("exporting"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("messages"),
                TextColumn("{task.fields[size]}"),
                TimeElapsedColumn(),
            ) as bar,
        ):
            task = bar.add_task("export", total=total, size=decimal(0))
            async for chunk in client.stream(client.chat.ExportConversation, request):
                sink.write(chunk.data)
                written += len(chunk.data)
                messages = chunk.message_count  # so far, this chunk included
                bar.update(task, completed=min(messages, total or messages), size=decimal(written))
        return messages, written

    messages, written = app.run(download)
    summary = {"file": str(out), "format": chosen, "messages": messages, "bytes": written}
    emit([summary], SUMMARY_COLUMNS, fmt_of(fmt), document=summary)


SUMMARY_COLUMNS = (
    Column("file", lambda s: s["file"]),
    Column("format", lambda s: s["format"]),
    Column("messages", lambda s: s["messages"]),
    Column("bytes", lambda s: s["bytes"]),
)


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[IO[bytes]]:
    """A temporary file beside ``final``, renamed over it (after fsync) when the block ends
    without an error, and removed otherwise."""
    handle, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    temporary = Path(name)
    try:
        with os.fdopen(handle, "wb") as sink:
            yield sink
            sink.flush()
            os.fsync(sink.fileno())
        temporary.chmod(0o644 & ~_umask())
        temporary.replace(final)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
