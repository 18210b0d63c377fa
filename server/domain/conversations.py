"""What the services ask of the conversation store: list filters and counter updates."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ConversationFilter:
    """ListConversations filters; empty values mean "any"."""

    user_id: str = ""
    channel: int = 0
    status: int = 0
    activity_from: dt.datetime | None = None
    activity_to: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class Recording:
    """New messages of one conversation, for record_messages_many."""

    tenant_id: str
    conversation_id: str
    inbound: int
    outbound: int
    now: dt.datetime
    #: Teams, from a verified activity: kept in the metadata, replies are posted there.
    service_url: str = ""
