"""The bridge's forwarder cuts a webhook's events into IngestEvents calls the server answers
well inside the forward deadline, keeping their order."""

from __future__ import annotations

from chat.v1 import ingest_service_pb2
from webhook_bridge.forwarder import MAX_BATCH, MAX_MESSAGES, _calls


def event(n: int, kind: str) -> ingest_service_pb2.InboundEvent:
    made = ingest_service_pb2.InboundEvent(platform_event_id=f"ev-{n}")
    if kind == "message":
        made.message.platform_message_id = f"wamid.{n}"
    else:
        made.status.platform_message_ids.append(f"wamid.{n}")
    return made


def test_calls_keep_the_order_and_hold_at_most_their_share_of_events_and_messages() -> None:
    events = [event(n, "message" if n % 3 == 0 else "status") for n in range(5000)]

    calls = _calls(events)

    assert [e.platform_event_id for call in calls for e in call] == [
        e.platform_event_id for e in events
    ]
    assert all(len(call) <= MAX_BATCH for call in calls)
    assert all(sum(e.HasField("message") for e in call) <= MAX_MESSAGES for call in calls)
    assert len(calls) == -(-len([e for e in events if e.HasField("message")]) // MAX_MESSAGES)


def test_statuses_alone_go_max_batch_at_a_time() -> None:
    calls = _calls([event(n, "status") for n in range(1001)])

    assert [len(call) for call in calls] == [MAX_BATCH, MAX_BATCH, 1]
