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
#: the slowest call near a quarter of FORWARD_TIMEOUT_SECONDS on a slow machine, whatever a
#: webhook's size (a 1 MiB WhatsApp webhook holds some 9,000 statuses); the calls are made one
#: after another, so a user's events keep their order.
MAX_BATCH = 500
MAX_MESSAGES = 50
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
    """IngestEvents calls of at most MAX_BATCH events, MAX_MESSAGES of them messages."""

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
        for chunk in _calls(events):
            request = ingest_service_pb2.IngestEventsRequest(events=chunk)
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
) -> list[list[ingest_service_pb2.InboundEvent]]:
    """The events in order, cut into calls of at most MAX_BATCH events and MAX_MESSAGES
    messages."""
    calls: list[list[ingest_service_pb2.InboundEvent]] = []
    messages = MAX_MESSAGES
    for event in events:
        message = event.WhichOneof("kind") == "message"
        if not calls or len(calls[-1]) == MAX_BATCH or (message and messages == MAX_MESSAGES):
            calls.append([])
            messages = 0
        calls[-1].append(event)
        messages += message
    return calls
