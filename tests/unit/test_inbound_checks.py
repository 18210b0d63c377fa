"""check_event names every problem of an ingested event, not only the first."""

from __future__ import annotations

from chat.v1 import common_pb2
from chat.v1 import ingest_service_pb2 as ingest
from server.domain.inbound import check_event


def test_every_problem_of_an_event_is_named() -> None:
    event = ingest.InboundEvent(
        channel=common_pb2.CHANNEL_TYPE_WEB,
        platform_user_id="",
        status=ingest.StatusReport(status=common_pb2.DELIVERY_STATUS_UNSPECIFIED),
    )
    problems = check_event(event).split("; ")
    assert [p.split(":")[0] for p in problems] == [
        "platform_event_id",
        "channel",
        "platform_user_id",
        "status.status",
    ]


def test_a_valid_event_has_no_problem() -> None:
    event = ingest.InboundEvent(
        platform_event_id="e-1",
        channel=common_pb2.CHANNEL_TYPE_WHATSAPP,
        platform_user_id="u-1",
        status=ingest.StatusReport(
            status=common_pb2.DELIVERY_STATUS_READ, platform_message_ids=["m-1"]
        ),
    )
    assert check_event(event) == ""
