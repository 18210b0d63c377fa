"""The database floor (bench/floor.py) measured in the same run and on the same embedded server
as the service, right after the service's own measurement, and the figures that compare them.

The floor's batches are capped at the mean batch the service reached over its measurement
(its group-commit histogram, chat_group_commit_batch_size, read from its /metrics at the start
and the end of the measurement, warm-up excluded), so both are compared at the same batching.
The floor runs in this process: its CPU is the load client's, reported like every client's, so
a floor held back by its own client shows.
The service's queue polls go on meanwhile (a few requests a second) and count for the floor.
"""

from __future__ import annotations

import itertools
import time
import uuid
from dataclasses import dataclass
from typing import Any

from pymongo import AsyncMongoClient

from bench.common import (
    DURATION_SECONDS,
    USERS,
    DatabaseWatch,
    Figure,
    Load,
    client_figure,
    drive,
    drop_database,
)
from bench.floor import SendMessageFloor, prepare
from bench.floor_documents import ACTIVE, TENANT, WEB
from bench.floor_webhooks import WebhookFloor
from server.repositories.mongo import CONVERSATIONS

IN_FLIGHT = 64
#: A database of the floor's own on the service's server.
DATABASE = "chat_bench_floor"
#: The first webhook of each sender is a first contact, as each of the service's is (its 2,000
#: senders, bench/ingest.py's, come round again only after 2,000 webhooks): a floor faster than
#: that still writes first contacts only.
SENDER = "1555{:07d}"
#: The group commit's largest batch: the cap when the service's mean is not known.
MAX_BATCH = 64

Mongo = AsyncMongoClient[dict[str, Any]]


def _cap(mean: float | None) -> int:
    return MAX_BATCH if mean is None else max(1, round(mean))


async def reset(uri: str) -> None:
    """The floor's database, empty (nothing else uses it)."""
    await drop_database(uri, DATABASE)


async def active_web_users(uri: str, database: str) -> list[str]:
    """The users with an active web conversation in the service's database now."""
    client: Mongo = AsyncMongoClient(uri)
    try:
        cursor = client[database][CONVERSATIONS].find(
            {"tenant_id": TENANT, "channel": WEB, "status": ACTIVE}, {"user_id": 1, "_id": 0}
        )
        return [document["user_id"] async for document in cursor]
    finally:
        await client.close()


def _ratio_figures(
    tag: str,
    *,
    cpu: tuple[float, float],
    rps: tuple[float, float],
    cpu_target: float,
    rps_target: float,
) -> list[Figure]:
    """The service against the floor: (service, floor) database CPU ms and throughput."""
    figures = []
    if cpu[1]:  # zero: a database elsewhere, whose CPU is not seen
        ratio = cpu[0] / cpu[1]
        figures.append(
            Figure(
                f"{tag}_db_cpu_floor_ratio",
                round(ratio, 2),
                "x floor",
                f"<= {cpu_target}x floor",
                ratio <= cpu_target,
                round(cpu[1], 3),
            )
        )
    ratio = rps[0] / rps[1]
    figures.append(
        Figure(
            f"{tag}_throughput_floor_ratio",
            round(ratio, 3),
            "x floor",
            f">= {rps_target}x floor",
            ratio >= rps_target,
            round(rps[1], 1),
        )
    )
    return figures


async def send_message(
    uri: str,
    *,
    service: Load,
    service_figures: list[Figure],
    service_batch: float | None,
    active_users: list[str],
    database: DatabaseWatch,
) -> list[Figure]:
    """SendMessage's floor at 64 in flight, from the conversations the service had when its
    own measurement started (so both start as many conversations), and the comparison; the
    service's database figures at 64 in flight get the floor's as their baseline."""
    client: Mongo = AsyncMongoClient(uri, tz_aware=True)
    try:
        floor_db = client[DATABASE]
        await prepare(floor_db)
        floor = SendMessageFloor(database=floor_db, max_batch=_cap(service_batch))
        await floor.seed(active_users)

        async def send() -> None:
            await floor.send(f"user-{uuid.uuid4().int % USERS}")

        load = await drive(
            send, in_flight=IN_FLIGHT, seconds=DURATION_SECONDS, server_pids=(), database=database
        )
        await floor.settled()
    finally:
        await client.close()
    floor_batch = floor.batches.mean_since(database.history[-2].time)
    cpu, requests = load.database_per_request()
    service_cpu = service.database_per_request()[0]
    for figure in service_figures:
        if figure.name == f"send_message_{IN_FLIGHT}_in_flight_db_cpu_per_request":
            figure.baseline = round(cpu, 3)
        elif figure.name == f"send_message_{IN_FLIGHT}_in_flight_db_requests_per_request":
            figure.baseline = round(requests, 2)
    tag = "floor_send_message"
    return [
        Figure(f"{tag}_rps", round(load.rps, 1), "requests/s", "", None),
        *([Figure(f"{tag}_db_cpu_per_request", round(cpu, 3), "ms", "", None)] if cpu else []),
        Figure(f"{tag}_db_requests_per_request", round(requests, 2), "requests", "", None),
        Figure(
            "send_message_batch_size",
            round(service_batch or 0, 1),
            "exchanges",
            "(the floor's cap)",
            None,
            None if floor_batch is None else round(floor_batch, 1),
        ),
        client_figure(tag, load.client_cores),
        *_ratio_figures(
            "send_message",
            cpu=(service_cpu, cpu),
            rps=(service.rps, load.rps),
            cpu_target=1.2,
            rps_target=0.9,
        ),
    ]


@dataclass(frozen=True)
class Pipeline:
    """Webhooks from their ingest to their delivered replies, measured over the ingest window
    and the drain after it."""

    webhooks: float
    #: The rate of delivered replies over the window and the drain.
    rps: float
    database_cpu_seconds: float
    database_requests: int
    batches: dict[str, float | None]

    def per_webhook(self) -> tuple[float, float]:
        """The database's CPU (ms) and requests per webhook."""
        return (
            self.database_cpu_seconds / self.webhooks * 1000,
            self.database_requests / self.webhooks,
        )


async def webhooks(uri: str, *, service: Pipeline, database: DatabaseWatch) -> list[Figure]:
    """The first-contact webhook's floor at 64 in flight (ingest, reply and delivery stages
    each group-committed), through to the last delivered reply, and the comparison."""
    client: Mongo = AsyncMongoClient(uri, tz_aware=True)
    caps = {call: _cap(mean) for call, mean in service.batches.items()}
    try:
        floor_db = client[DATABASE]
        await prepare(floor_db)
        floor = WebhookFloor(
            database=floor_db,
            ingest_batch=caps["ingest"],
            reply_batch=caps["reply"],
            delivery_batch=caps["delivery"],
        )
        senders = itertools.count()

        async def post() -> None:
            await floor.webhook(SENDER.format(next(senders)))

        load = await drive(
            post, in_flight=IN_FLIGHT, seconds=DURATION_SECONDS, server_pids=(), database=database
        )
        started = database.history[-2]
        drain = time.perf_counter()
        await floor.drained()
        drain_seconds = time.perf_counter() - drain
        ended = database.sample()
    finally:
        await client.close()
    ours = Pipeline(
        webhooks=load.requests,
        rps=load.requests / (load.seconds + drain_seconds),
        database_cpu_seconds=ended[0] - started[0],
        database_requests=ended[1] - started[1],
        batches={
            "ingest": floor.ingest.mean_since(started.time),
            "reply": floor.replies.mean_since(started.time),
            "delivery": floor.deliveries.mean_since(started.time),
        },
    )
    return _webhook_figures(service, ours, load)


def _webhook_figures(service: Pipeline, floor: Pipeline, load: Load) -> list[Figure]:
    cpu, requests = floor.per_webhook()
    service_cpu, service_requests = service.per_webhook()
    tag = "floor_webhook"
    figures = [
        Figure(f"{tag}_ingest_rps", round(load.rps, 1), "requests/s", "", None),
        Figure(f"{tag}_pipeline_rps", round(floor.rps, 1), "requests/s", "", None),
        *([Figure(f"{tag}_db_cpu_per_webhook", round(cpu, 3), "ms", "", None)] if cpu else []),
        Figure(f"{tag}_db_requests_per_webhook", round(requests, 2), "requests", "", None),
        client_figure(tag, load.client_cores),
    ]
    if service_cpu:
        figures.append(
            Figure(
                "webhook_pipeline_db_cpu_per_webhook",
                round(service_cpu, 3),
                "ms",
                "(ingest window and drain)",
                None,
                round(cpu, 3),
            )
        )
    figures.append(
        Figure(
            "webhook_pipeline_db_requests_per_webhook",
            round(service_requests, 2),
            "requests",
            "(ingest window and drain)",
            None,
            round(requests, 2),
        )
    )
    for call, mean in service.batches.items():
        theirs = floor.batches[call]
        figures.append(
            Figure(
                f"webhook_{call}_batch_size",
                round(mean or 0, 1),
                "items",
                "(the floor's cap)",
                None,
                None if theirs is None else round(theirs, 1),
            )
        )
    return figures + _ratio_figures(
        "webhook",
        cpu=(service_cpu, cpu),
        rps=(service.rps, floor.rps),
        cpu_target=1.3,
        rps_target=0.8,
    )
