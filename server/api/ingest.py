"""IngestService: normalized platform events from the webhook bridge."""

from __future__ import annotations

from typing import Any

from chat.v1 import ingest_service_pb2, ingest_service_pb2_grpc
from server.auth.principal import current_principal
from server.domain.errors import FieldViolation, InvalidArgument
from server.services.ingest import IngestService

MAX_EVENTS = 1000


class IngestServicer(ingest_service_pb2_grpc.IngestServiceServicer):
    """Checks the batch's shape; each event is judged on its own by the service."""

    def __init__(self, *, ingest: IngestService) -> None:
        self._ingest = ingest

    async def IngestEvents(
        self, request: ingest_service_pb2.IngestEventsRequest, context: Any
    ) -> ingest_service_pb2.IngestEventsResponse:
        if not 1 <= len(request.events) <= MAX_EVENTS:
            raise InvalidArgument(
                "the batch is malformed",
                field_violations=[FieldViolation("events", f"1 to {MAX_EVENTS} events")],
            )
        results = await self._ingest.ingest(
            current_principal().tenant_id, request.events, apply_later=request.apply_later
        )
        return ingest_service_pb2.IngestEventsResponse(results=results)
