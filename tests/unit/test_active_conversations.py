"""ActiveConversations: what is remembered, for how long, and what replaces it."""

from __future__ import annotations

import pytest

from chat.v1 import common_pb2 as c
from server.services.active_conversations import ActiveConversations

WEB = c.CHANNEL_TYPE_WEB


def conversation(
    conversation_id: str, *, user: str = "u1", sequence: int = 1, closed: bool = False
) -> c.Conversation:
    return c.Conversation(
        id=conversation_id,
        user_id=user,
        channel=WEB,
        last_sequence=sequence,
        status=c.CONVERSATION_STATUS_CLOSED if closed else c.CONVERSATION_STATUS_ACTIVE,
    )


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_remembered_per_tenant_user_and_channel() -> None:
    active = ActiveConversations()
    active.remember("acme", conversation("c1"))
    assert active.recall("acme", "u1", WEB) == conversation("c1")
    assert active.recall("globex", "u1", WEB) is None
    assert active.recall("acme", "u2", WEB) is None
    assert active.recall("acme", "u1", c.CHANNEL_TYPE_SLACK) is None


def test_an_older_state_does_not_replace_a_newer_one() -> None:
    active = ActiveConversations()
    active.remember("acme", conversation("c1", sequence=4))
    active.remember("acme", conversation("c1", sequence=2))  # a slower commit's answer
    recalled = active.recall("acme", "u1", WEB)
    assert recalled is not None
    assert recalled.last_sequence == 4
    active.remember("acme", conversation("c2", sequence=1))  # the next conversation
    recalled = active.recall("acme", "u1", WEB)
    assert recalled is not None
    assert recalled.id == "c2"


def test_a_closed_conversation_is_forgotten_not_remembered() -> None:
    active = ActiveConversations()
    active.remember("acme", conversation("c1"))
    active.remember("acme", conversation("c1", sequence=5, closed=True))
    assert active.recall("acme", "u1", WEB) is None


def test_forget_leaves_a_newer_conversation_alone() -> None:
    active = ActiveConversations()
    active.remember("acme", conversation("c2"))
    active.forget("acme", conversation("c1", closed=True))
    assert active.recall("acme", "u1", WEB) == conversation("c2")
    active.forget("acme", conversation("c2"))
    assert active.recall("acme", "u1", WEB) is None


def test_entries_age_out() -> None:
    clock = Clock()
    active = ActiveConversations(max_age_seconds=30, clock=clock)
    active.remember("acme", conversation("c1"))
    clock.now = 29.0
    assert active.recall("acme", "u1", WEB) is not None
    clock.now = 31.0
    assert active.recall("acme", "u1", WEB) is None
    assert len(active) == 0


def test_the_least_recently_used_entry_goes_first() -> None:
    active = ActiveConversations(capacity=2)
    active.remember("acme", conversation("c1", user="u1"))
    active.remember("acme", conversation("c2", user="u2"))
    assert active.recall("acme", "u1", WEB) is not None  # u1 is now the most recent
    active.remember("acme", conversation("c3", user="u3"))
    assert len(active) == 2
    assert active.recall("acme", "u2", WEB) is None
    assert active.recall("acme", "u1", WEB) is not None
    assert active.recall("acme", "u3", WEB) is not None


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        ActiveConversations(capacity=0)


def test_a_closed_conversation_is_not_remembered_again() -> None:
    """A message committed just before the close finishes after it: its open state must not
    come back."""
    active = ActiveConversations()
    active.remember("acme", conversation("c1", sequence=2))
    active.closed("acme", conversation("c1", sequence=2))
    active.remember("acme", conversation("c1", sequence=3))  # the late commit's answer
    assert active.recall("acme", "u1", WEB) is None
    active.remember("acme", conversation("c2", sequence=1))  # the user's next conversation
    assert active.recall("acme", "u1", WEB) == conversation("c2", sequence=1)
