from __future__ import annotations

import re

import pytest

from chat.v1 import common_pb2, events_pb2
from server.events.topics import ALL_TOPICS, TOPIC_BY_PAYLOAD, record_key, topic_for


def test_every_event_of_the_contract_has_its_own_versioned_topic() -> None:
    payloads = events_pb2.EventEnvelope.DESCRIPTOR.oneofs_by_name["payload"].fields
    assert {field.name for field in payloads} == set(TOPIC_BY_PAYLOAD)
    assert len(set(TOPIC_BY_PAYLOAD.values())) == len(TOPIC_BY_PAYLOAD)
    for topic in TOPIC_BY_PAYLOAD.values():
        assert re.fullmatch(r"chat\.[a-z]+\.[a-z]+\.v1", topic), topic
    assert TOPIC_BY_PAYLOAD["message_received"] == "chat.message.received.v1"
    assert "chat.dlq.v1" in ALL_TOPICS


def test_topic_and_key_of_an_envelope() -> None:
    envelope = events_pb2.EventEnvelope(
        event_id="e1",
        tenant_id="acme",
        conversation_id="c9",
        conversation_ended=events_pb2.ConversationEnded(
            conversation=common_pb2.Conversation(id="c9")
        ),
    )
    assert topic_for(envelope) == "chat.conversation.ended.v1"
    assert record_key(envelope) == b"acme:c9"


def test_an_envelope_without_payload_has_no_topic() -> None:
    with pytest.raises(ValueError, match="no payload"):
        topic_for(events_pb2.EventEnvelope(event_id="e1"))
