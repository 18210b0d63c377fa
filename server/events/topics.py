"""Kafka topics, read from the contract: each event payload names its topic in an option."""

from __future__ import annotations

from chat.v1 import events_pb2

DEAD_LETTER_TOPIC = "chat.dlq.v1"


def _payload_topics() -> dict[str, str]:
    payload = events_pb2.EventEnvelope.DESCRIPTOR.oneofs_by_name["payload"]
    topics: dict[str, str] = {}
    for field in payload.fields:
        assert field.message_type is not None, "every envelope payload is a message"  # noqa: S101
        topics[field.name] = field.message_type.GetOptions().Extensions[events_pb2.event_topic]
    return topics


#: Envelope payload field name -> topic, for every event in chat.v1.
TOPIC_BY_PAYLOAD: dict[str, str] = _payload_topics()

#: Every topic the service publishes to or consumes from.
ALL_TOPICS: tuple[str, ...] = (*sorted(set(TOPIC_BY_PAYLOAD.values())), DEAD_LETTER_TOPIC)


def topic_for(envelope: events_pb2.EventEnvelope) -> str:
    """The topic an envelope belongs on; ValueError when it carries no payload."""
    payload = envelope.WhichOneof("payload")
    if payload is None:
        raise ValueError("event envelope has no payload")
    return TOPIC_BY_PAYLOAD[payload]


def record_key(envelope: events_pb2.EventEnvelope) -> bytes:
    """The record key: one conversation's events share a partition, so they stay in order."""
    return f"{envelope.tenant_id}:{envelope.conversation_id}".encode()
