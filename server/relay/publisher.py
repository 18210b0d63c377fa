"""Publishes event envelopes to Kafka.

Tansu (the embedded broker) and some managed Kafkas refuse idempotent producers, so the
producer runs with acks=all and without idempotence: delivery is at-least-once, and consumers
deduplicate on ``EventEnvelope.event_id``.

The broker may be down when the service starts, and the service must start anyway (events
wait in the outbox), so the producer is started lazily and re-created after a failed start.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer

from chat.v1 import events_pb2
from server.events.topics import record_key, topic_for

#: (topic, key, value, headers): headers carry the trace (W3C traceparent) when there is one.
OutgoingRecord = tuple[str, bytes, bytes, list[tuple[str, bytes]]]


class KafkaEventPublisher:
    """Sends envelopes to their topics, keyed by tenant and conversation."""

    def __init__(self, *, bootstrap_servers: str, client_id: str = "chat-server") -> None:
        self._bootstrap_servers = bootstrap_servers
        self._client_id = client_id
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def _started(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        async with self._lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self._bootstrap_servers,
                    client_id=self._client_id,
                    acks="all",
                    enable_idempotence=False,
                    linger_ms=5,
                    request_timeout_ms=10_000,
                )
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    async def publish(self, envelope: events_pb2.EventEnvelope) -> None:
        """Send one envelope and wait for the broker's acknowledgement."""
        await self.publish_records(
            [(topic_for(envelope), record_key(envelope), envelope.SerializeToString(), [])]
        )

    async def publish_records(
        self, records: Sequence[OutgoingRecord], *, within: float = 15.0
    ) -> None:
        """Send (topic, key, value, headers) records in order; wait until the broker has them all.

        aiokafka retries a batch for as long as the broker is away; ``within`` bounds that,
        and a failed producer is replaced, so the next attempt starts with fresh metadata (a
        restarted broker). Records it may still deliver are duplicates the consumers drop.
        """
        producer = await self._started()
        try:
            async with asyncio.timeout(within):
                pending = [
                    await producer.send(topic, value, key=key, headers=headers or None)
                    for topic, key, value, headers in records
                ]
                await asyncio.gather(*pending)
        except Exception:
            await self._discard(producer)
            raise

    async def _discard(self, producer: AIOKafkaProducer) -> None:
        async with self._lock:
            if self._producer is producer:
                self._producer = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), 5)

    async def probe(self) -> None:
        """Raise unless a broker answers a metadata request."""
        producer = await self._started()
        await producer.client.fetch_all_metadata()

    async def close(self) -> None:
        """Flush pending records and close the connections."""
        async with self._lock:
            if self._producer is not None:
                await self._producer.stop()
                self._producer = None
