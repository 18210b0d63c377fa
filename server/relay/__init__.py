"""Run inside chat-server: the outbox relay, which publishes committed events to Kafka."""
