"""What an event is and where it goes: envelopes and Kafka topics, shared by every process."""
