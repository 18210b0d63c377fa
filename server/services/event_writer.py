"""Writes events that stand alone (not part of a larger transaction) to the outbox."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from server.domain.errors import AlreadyExists
from server.events.envelopes import envelope
from server.services.ports import Outbox, TransactionRunner


class EventWriter:
    """One event, one small transaction, then a nudge to the relay."""

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
        try:
            await self._transactions.run(lambda tx: self._outbox.add([event], now=now, tx=tx))
        except AlreadyExists:
            return  # written before: one event, whatever the number of writers
        self._on_events()
