"""The bridge's forwarder sends a webhook's events in one IngestEvents call the server applies
well inside the forward deadline, or, when they do not fit in one, in calls the server stores
whole and applies after answering; the order is kept either way."""

from __future__ import annotations

from chat.v1 import ingest_service_pb2
from server.api.ingest import MAX_EVENTS
from webhook_bridge.forwarder import MAX_BATCH, MAX_MESSAGES, MAX_QUEUED_BATCH, _calls


def event(n: int, kind: str) -> ingest_service_pb2.InboundEvent:
    made = ingest_service_pb2.InboundEvent(platform_event_id=f"ev-{n}")
    if kind == "message":
        made.message.platform_message_id = f"wamid.{n}"
    else:
        made.status.platform_message_ids.append(f"wamid.{n}")
    return made


def test_a_webhook_that_fits_one_call_is_applied_within_it() -> None:
    events = [event(n, "message" if n < MAX_MESSAGES else "status") for n in range(MAX_BATCH)]

    calls, apply_later = _calls(events)

    assert calls == [events]
    assert apply_later is False


def test_more_messages_than_one_call_holds_go_in_order_to_be_applied_later() -> None:
    events = [event(n, "message" if n % 3 == 0 else "status") for n in range(5000)]

    calls, apply_later = _calls(events)

    assert apply_later is True
    assert [e.platform_event_id for call in calls for e in call] == [
        e.platform_event_id for e in events
    ]
    assert [len(call) for call in calls] == [MAX_QUEUED_BATCH] * 5


def test_one_message_too_many_is_enough_to_apply_later() -> None:
    calls, apply_later = _calls([event(n, "message") for n in range(MAX_MESSAGES + 1)])

    assert apply_later is True
    assert [len(call) for call in calls] == [MAX_MESSAGES + 1]


def test_statuses_beyond_one_call_go_in_calls_as_large_as_the_server_takes() -> None:
    calls, apply_later = _calls([event(n, "status") for n in range(2 * MAX_QUEUED_BATCH + 1)])

    assert apply_later is True
    assert [len(call) for call in calls] == [MAX_QUEUED_BATCH, MAX_QUEUED_BATCH, 1]
    assert MAX_QUEUED_BATCH == MAX_EVENTS  # as many as the server takes in one call
