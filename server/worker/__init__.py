"""chat-worker: consumes the event topics, routes each event to its handlers, retries and
dead-letters the failures."""
