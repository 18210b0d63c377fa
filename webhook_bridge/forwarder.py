"""Forwards normalized events to the chat server's IngestService."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import structlog

from chat.v1 import ingest_service_pb2, ingest_service_pb2_grpc
from webhook_bridge.tokens import ServiceTokens

log = structlog.get_logger("chat.bridge.forward")

#: Well inside every platform's deadline (Slack's 3 s is the shortest).
FORWARD_TIMEOUT_SECONDS = 2.0
#: Events per IngestEvents call (the server takes up to 1,000), and messages among them. The
#: server applies a call's statuses together, at about a millisecond each on the embedded
#: store; a message from a new user starts a conversation, near 10 ms each. These sizes keep
#: the slowest call near a quarter of FORWARD_TIMEOUT_SECONDS on a slow machine.
MAX_BATCH = 500
MAX_MESSAGES = 50
#: A webhook that one call of that size does not hold (a 1 MiB WhatsApp webhook holds some
#: 9,000 statuses or 8,000 messages) would take many such calls, longer than the platform
#: waits: its events go instead with ``apply_later``, as many as the server takes in one call
#: (1,000), each call a single write to the server's inbox, and are applied shortly after the
#: platform's 200. The calls are made one after another, so a user's events keep their order.
MAX_QUEUED_BATCH = 1000
#: The channel's reconnect backoff after the server went away: gRPC's default grows from 1 s
#: to 120 s, so after a long outage the bridge would go on refusing webhooks for up to two
#: minutes once the server is back. Attempts at most a second apart (plus gRPC's 20% jitter)
#: keep a webhook arriving just after a restart within FORWARD_TIMEOUT_SECONDS. (Not
#: grpc.min_reconnect_backoff_ms: despite its name, gRPC core takes it as the time one
#: connection attempt may take.)
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


class ServerUnavailableError(Exception):
    """The server could not take the events: answer the platform 503 so it retries."""


class Forwarder:
    """One IngestEvents call applied within it when the webhook fits (at most MAX_BATCH
    events, MAX_MESSAGES of them messages), else calls of MAX_QUEUED_BATCH events applied
    later."""

    def __init__(self, *, channel: grpc.aio.Channel, tokens: ServiceTokens) -> None:
        self._stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
        self._tokens = tokens

    async def forward(
        self, tenant_id: str, events: Sequence[ingest_service_pb2.InboundEvent]
    ) -> list[ingest_service_pb2.IngestResult]:
        """The results of every event, in order; ServerUnavailableError when the server did
        not store them (the platform's retry is then deduplicated by the server)."""
        metadata = (("authorization", f"Bearer {self._tokens.for_tenant(tenant_id)}"),)
        results: list[ingest_service_pb2.IngestResult] = []
        calls, apply_later = _calls(events)
        for chunk in calls:
            request = ingest_service_pb2.IngestEventsRequest(events=chunk, apply_later=apply_later)
            try:
                # wait_for_ready: a server back after a restart is reached within the deadline,
                # not refused because the connection is still waiting out its reconnect backoff.
                response = await self._stub.IngestEvents(
                    request,
                    metadata=metadata,
                    timeout=FORWARD_TIMEOUT_SECONDS,
                    wait_for_ready=True,
                )
            except grpc.aio.AioRpcError as exc:
                log.warning(
                    "events not forwarded",
                    tenant_id=tenant_id,
                    code=exc.code().name,
                    details=exc.details(),
                )
                raise ServerUnavailableError(exc.code().name) from None
            results.extend(response.results)
        return results


def _calls(
    events: Sequence[ingest_service_pb2.InboundEvent],
) -> tuple[list[list[ingest_service_pb2.InboundEvent]], bool]:
    """The events in order, cut into calls, and whether the calls are to be applied later:
    one call when they fit in MAX_BATCH events and MAX_MESSAGES messages, else calls of
    MAX_QUEUED_BATCH events applied later."""
    messages = sum(event.WhichOneof("kind") == "message" for event in events)
    if len(events) <= MAX_BATCH and messages <= MAX_MESSAGES:
        return [list(events)], False
    size = MAX_QUEUED_BATCH
    return [list(events[i : i + size]) for i in range(0, len(events), size)], True
