"""deliveries status/failed/retry, and dlq replay (the event worker's dead letters)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import Counter
from typing import Any

import click
import grpc
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

from chat.v1 import delivery_service_pb2 as delivery
from chat_client.cli.app import (
    WHEN,
    App,
    cli,
    fmt_of,
    output_option,
    pass_app,
    say,
    usage,
)
from chat_client.cli.commands.conversations import CHANNEL, CHANNELS, time_range
from chat_client.cli.commands.export import progress_bar
from chat_client.cli.exits import FAILED, OK, UNAVAILABLE, CommandError
from chat_client.cli.output import Column, channel_name, delivery_name, emit
from chat_client.client import ChatClient, new_request_id
from chat_client.errors import ChatError

DELIVERY_COLUMNS = (
    Column("message", lambda d: d.message_id, wrap=False),
    Column("conversation", lambda d: d.conversation_id),
    Column("channel", lambda d: channel_name(d.channel)),
    Column("recipient", lambda d: d.recipient_id),
    Column("status", lambda d: delivery_name(d.status)),
    Column("attempts", lambda d: d.attempt_count),
    Column(
        "last error", lambda d: " ".join(p for p in (d.last_error.code, d.last_error.message) if p)
    ),
    Column("updated", lambda d: d.update_time),
)
#: Retries sent at once by `deliveries retry`.
RETRY_CONCURRENCY = 8


@cli.group()
def deliveries() -> None:
    """Delivery status, failed deliveries and retries."""


@deliveries.command("status")
@click.argument("message_id")
@output_option
@pass_app
def status(app: App, message_id: str, fmt: str | None) -> None:
    """The delivery record of one outbound message, with its attempts."""
    request = delivery.GetDeliveryStatusRequest(message_id=message_id)
    response = app.run(lambda client: client.call(client.deliveries.GetDeliveryStatus, request))
    emit([response.delivery], DELIVERY_COLUMNS, fmt_of(fmt), document=response)


def failed_request(
    channel: str | None, since: dt.datetime | None, until: dt.datetime | None
) -> delivery.ListFailedDeliveriesRequest:
    return delivery.ListFailedDeliveriesRequest(
        page_size=100,
        channel=CHANNELS[channel] if channel else 0,  # type: ignore[arg-type]
        update_time_range=time_range(since, until),
    )


async def all_failed(
    client: ChatClient, request: delivery.ListFailedDeliveriesRequest, limit: int | None
) -> list[delivery.Delivery]:
    pages = client.pages(
        client.deliveries.ListFailedDeliveries, request, lambda p: p.deliveries, limit=limit
    )
    return [item async for item in pages]


@deliveries.command("failed")
@click.option("--channel", type=CHANNEL, help="Only this channel's.")
@click.option("--since", type=WHEN, help="Failed since (ISO 8601, or 15m, 2h, 7d ago).")
@click.option("--until", type=WHEN, help="Failed until.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@output_option
@pass_app
def failed(
    app: App,
    channel: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    limit: int,
    fmt: str | None,
) -> None:
    """Deliveries that failed for good (the dead letter), newest first."""
    request = failed_request(channel, since, until)
    emit(app.run(lambda client: all_failed(client, request, limit)), DELIVERY_COLUMNS, fmt_of(fmt))


OUTCOME_COLUMNS = (
    Column("message", lambda o: o["message_id"], wrap=False),
    Column("outcome", lambda o: o["outcome"]),
    Column("detail", lambda o: o["detail"]),
)


@deliveries.command("retry")
@click.argument("message_ids", nargs=-1)
@click.option("--all", "retry_all", is_flag=True, help="Every failed delivery (with the filters).")
@click.option("--channel", type=CHANNEL, help="With --all: only this channel's.")
@click.option("--since", type=WHEN, help="With --all: failed since.")
@click.option("--until", type=WHEN, help="With --all: failed until.")
@output_option
@pass_app
def retry(
    app: App,
    message_ids: tuple[str, ...],
    retry_all: bool,
    channel: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    fmt: str | None,
) -> int:
    """Put failed deliveries back in the queue (MESSAGE_ID..., or --all), with a fresh attempt
    budget; prints each outcome and a summary. Exit status 1 when any retry failed."""
    if bool(message_ids) == retry_all:
        raise usage("give MESSAGE_ID... or --all (not both)")
    if not retry_all and (channel or since or until):
        raise usage("--channel, --since and --until go with --all")

    async def retry_each(client: ChatClient) -> list[dict[str, Any]]:
        ids = list(message_ids)
        if retry_all:
            found = await all_failed(client, failed_request(channel, since, until), None)
            ids = [item.message_id for item in found]
        with progress_bar(
            TextColumn("retrying"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
        ) as bar:
            task = bar.add_task("retry", total=len(ids))
            semaphore = asyncio.Semaphore(RETRY_CONCURRENCY)

            async def one(message_id: str) -> dict[str, Any]:
                async with semaphore:
                    outcome = await retry_one(client, message_id)
                bar.advance(task)
                return outcome

            return list(await asyncio.gather(*(one(i) for i in ids)))

    outcomes = app.run(retry_each)
    emit(outcomes, OUTCOME_COLUMNS, fmt_of(fmt))
    tally = Counter(outcome["outcome"] for outcome in outcomes)
    say(
        f"retried {len(outcomes)} deliveries: "
        + (", ".join(f"{n} {what}" for what, n in sorted(tally.items())) or "none failed")
    )
    return FAILED if any(o["outcome"] != "queued" for o in outcomes) else OK


async def retry_one(client: ChatClient, message_id: str) -> dict[str, Any]:
    request = delivery.RetryDeliveryRequest(message_id=message_id, request_id=new_request_id())
    try:
        response = await client.call(client.deliveries.RetryDelivery, request)
    except ChatError as error:
        outcome = {
            grpc.StatusCode.FAILED_PRECONDITION: "not failed",
            grpc.StatusCode.NOT_FOUND: "not found",
        }.get(error.code, "error")
        return {"message_id": message_id, "outcome": outcome, "detail": str(error)}
    return {
        "message_id": message_id,
        "outcome": "queued",
        "detail": delivery_name(response.delivery.status),
    }


@cli.group()
def dlq() -> None:
    """The event worker's dead letters (Kafka topic chat.dlq.v1)."""


@dlq.command("replay")
@click.option(
    "--kafka",
    envvar="CHAT_KAFKA_BOOTSTRAP",
    default="127.0.0.1:9092",
    show_default=True,
    help="Kafka bootstrap servers. Env CHAT_KAFKA_BOOTSTRAP.",
)
@click.option("--tenant", default="", help="Only this tenant's dead letters.")
@click.option("--handler", default="", help="Only those of this handler.")
@click.option("--event-type", default="", help="Only this payload type.")
@click.option("--since", type=WHEN, help="Only those dead-lettered since.")
@click.option("--dry-run", is_flag=True, help="Count what matches; send nothing.")
def replay(
    kafka: str,
    tenant: str,
    handler: str,
    event_type: str,
    since: dt.datetime | None,
    dry_run: bool,
) -> None:
    """Send dead letters back to their topics once the cause is fixed (what `chat-worker
    replay-dlq` does; the handlers that had applied an event skip it)."""
    # The worker's own replay, so the two can never disagree; imported here because only this
    # command needs the server's code and Kafka client.
    from aiokafka.errors import KafkaError  # noqa: PLC0415

    from server.log import configure_logging  # noqa: PLC0415
    from server.worker.main import replay_dead_letters  # noqa: PLC0415

    # Each replayed letter is logged (to stderr): warnings only, stdout keeps the count.
    # The Kafka client's own complaints about an unreachable broker repeat the one line
    # this command prints.
    configure_logging(log_format="console", level="WARNING")
    for noisy in ("aiokafka", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    try:
        count = asyncio.run(
            replay_dead_letters(
                kafka,
                tenant_id=tenant,
                handler=handler,
                event_type=event_type,
                since=since,
                dry_run=dry_run,
            )
        )
    except (KafkaError, OSError) as exc:
        raise CommandError(
            f"Kafka at {kafka}: {type(exc).__name__}: {exc}", code=UNAVAILABLE
        ) from None
    click.echo(f"{'matched' if dry_run else 'replayed'} {count} dead letters")
