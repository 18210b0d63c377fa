"""Events reach the real broker, on their topic, keyed by tenant and conversation."""

from __future__ import annotations

import uuid

from aiokafka import AIOKafkaConsumer

from chat.v1 import common_pb2, events_pb2
from devstack.stack import Endpoints
from server.relay.publisher import KafkaEventPublisher


async def test_a_published_envelope_is_consumed_intact(stack: Endpoints) -> None:
    conversation_id = uuid.uuid4().hex
    envelope = events_pb2.EventEnvelope(
        event_id=uuid.uuid4().hex,
        tenant_id="acme",
        schema_version=1,
        conversation_id=conversation_id,
        conversation_started=events_pb2.ConversationStarted(
            conversation=common_pb2.Conversation(
                id=conversation_id, user_id="u1", channel=common_pb2.CHANNEL_TYPE_WEB
            )
        ),
    )
    publisher = KafkaEventPublisher(bootstrap_servers=stack.kafka_bootstrap)
    try:
        await publisher.publish(envelope)
    finally:
        await publisher.close()

    consumer = AIOKafkaConsumer(
        "chat.conversation.started.v1",
        bootstrap_servers=stack.kafka_bootstrap,
        group_id=f"test-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        found = None
        for _ in range(20):
            batches = await consumer.getmany(timeout_ms=500)
            for record in (r for records in batches.values() for r in records):
                if record.key == f"acme:{conversation_id}".encode():
                    found = record
            if found:
                break
    finally:
        await consumer.stop()
    assert found is not None, "the event never reached the broker"
    assert events_pb2.EventEnvelope.FromString(found.value) == envelope
