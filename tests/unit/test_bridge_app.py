"""The bridge app's pure helpers."""

from __future__ import annotations

from chat.v1 import ingest_service_pb2
from webhook_bridge.app import outcome_name


def test_outcome_names_include_values_of_a_newer_server() -> None:
    assert outcome_name(ingest_service_pb2.INGEST_OUTCOME_ACCEPTED) == "accepted"
    assert outcome_name(ingest_service_pb2.INGEST_OUTCOME_DEFERRED) == "deferred"
    assert (
        outcome_name(ingest_service_pb2.IngestOutcome.ValueType(99)) == "unknown"
    )  # was a ValueError: a 500 after the events were stored
