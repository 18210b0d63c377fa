"""Writes single events to the outbox: on their own (a small transaction), or inside the
caller's transaction with the change they describe."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from chat.v1 import events_pb2
from server.domain.errors import AlreadyExists
from server.events.envelopes import envelope
from server.services.ports import Outbox, TransactionRunner, Tx


class EventWriter:
    """One event: in its own small transaction (then a nudge to the relay), or in the
    caller's (the caller nudges the relay after its commit)."""

    def __init__(
        self,
        *,
        outbox: Outbox,
        transactions: TransactionRunner,
        on_events: Callable[[], None] = lambda: None,
    ) -> None:
        self._outbox = outbox
        self._transactions = transactions
        self._on_events = on_events

    async def write(
        self,
        *,
        tenant_id: str,
        actor_id: str,
        conversation_id: str,
        now: dt.datetime,
        event_id: str = "",
        **payload: Any,
    ) -> None:
        """Store the event for the relay, e.g. ``session_ended=SessionEnded(...)``. With a
        stable ``event_id``, writing it again while it waits is a no-op; once published it may
        go out again with the same id, which consumers deduplicate like any redelivery."""
        event = envelope(
            tenant_id=tenant_id,
            actor_id=actor_id,
            conversation_id=conversation_id,
            now=now,
            event_id=event_id,
            **payload,
        )
        await self.write_envelope(event)

    async def write_envelope(self, event: events_pb2.EventEnvelope) -> None:
        """Store an event built already (see ``write``), in its own small transaction."""
        now = event.occur_time.ToDatetime(tzinfo=dt.UTC)
        try:
            await self._transactions.run(lambda tx: self._outbox.add([event], now=now, tx=tx))
        except AlreadyExists:
            return  # written before: one event, whatever the number of writers
        self._on_events()

    async def within(
        self,
        tx: Tx,
        *,
        tenant_id: str,
        actor_id: str,
        conversation_id: str,
        now: dt.datetime,
        **payload: Any,
    ) -> None:
        """Store the event in ``tx``, with the change it describes, e.g.
        ``conversation_started=ConversationStarted(...)``."""
        event = envelope(
            tenant_id=tenant_id,
            actor_id=actor_id,
            conversation_id=conversation_id,
            now=now,
            **payload,
        )
        await self._outbox.add([event], now=now, tx=tx)
