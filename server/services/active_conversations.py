"""Each user's active conversation per channel, remembered in this process.

Every SendMessage and every inbound platform message without a conversation id starts by
finding the user's active conversation. Asking MongoDB each time costs a statement per
request, outside the group-committed transaction; here the answer is remembered instead.

A remembered conversation is only a hint, so it can never put a message where it does not
belong:
- It is used only while the conversation's session is live. Closing a conversation ends its
  session, and so does an expired or ended session; either way the caller asks MongoDB again.
- The transaction that stores the message checks that the conversation is still active (see
  ``record_messages_many``). A conversation closed by another process in the moment before
  its session ended fails that check; the caller forgets it and starts over.
- Entries older than ``max_age_seconds`` are not used, so another process's changes to the
  conversation (its counters, its metadata) reach the responder within that time.
- A conversation known to be closed is not remembered again: a message committed just before
  the close may finish after it, and would otherwise put the open state back. (Its session
  save can also outlive the close and make the session live again; then the first check
  above passes, and the second one catches it, at the cost of one answer composed in vain.)
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from chat.v1 import common_pb2

CAPACITY = 20_000
MAX_AGE_SECONDS = 30.0
ACTIVE = common_pb2.CONVERSATION_STATUS_ACTIVE

_Key = tuple[str, str, int]


class ActiveConversations:
    """A bounded, least-recently-used map of (tenant, user, channel) to the conversation."""

    def __init__(
        self,
        *,
        capacity: int = CAPACITY,
        max_age_seconds: float = MAX_AGE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._entries: OrderedDict[_Key, tuple[float, common_pb2.Conversation]] = OrderedDict()
        self._closed: OrderedDict[str, None] = OrderedDict()  # conversation ids
        self._capacity = capacity
        self._max_age = max_age_seconds
        self._clock = clock

    def recall(self, tenant_id: str, user_id: str, channel: int) -> common_pb2.Conversation | None:
        """The remembered conversation, if there is one young enough."""
        key = (tenant_id, user_id, channel)
        entry = self._entries.get(key)
        if entry is None:
            return None
        stored_at, conversation = entry
        if self._clock() - stored_at > self._max_age:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return conversation

    def remember(self, tenant_id: str, conversation: common_pb2.Conversation) -> None:
        """Keep a state just read or committed; a closed one is forgotten instead, and an
        older state (fewer messages) of the same conversation does not replace a newer one."""
        key = (tenant_id, conversation.user_id, conversation.channel)
        if conversation.status != ACTIVE:
            self.closed(tenant_id, conversation)
            return
        if conversation.id in self._closed:
            return
        entry = self._entries.get(key)
        if (
            entry is not None
            and entry[1].id == conversation.id
            and entry[1].last_sequence > conversation.last_sequence
        ):
            return
        self._entries[key] = (self._clock(), conversation)
        self._entries.move_to_end(key)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def forget(self, tenant_id: str, conversation: common_pb2.Conversation) -> None:
        """Drop the entry if it names this conversation (another one is the newer active)."""
        key = (tenant_id, conversation.user_id, conversation.channel)
        entry = self._entries.get(key)
        if entry is not None and entry[1].id == conversation.id:
            del self._entries[key]

    def closed(self, tenant_id: str, conversation: common_pb2.Conversation) -> None:
        """The conversation is closed: forget it, and never remember it again."""
        self.forget(tenant_id, conversation)
        self._closed[conversation.id] = None
        self._closed.move_to_end(conversation.id)
        while len(self._closed) > self._capacity:
            self._closed.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
