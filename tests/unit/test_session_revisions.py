"""CommittedPush keeps a session that changed meanwhile: the exchange's context updates go
onto the newer session, and an ended session stays ended (the revision's compare-and-set)."""

from __future__ import annotations

import copy
import datetime as dt

from chat.v1 import common_pb2
from server.services.live import CommittedPush, QuietLiveEvents
from tests.support.memory_stores import MemorySessions, RecordingLiveEvents

TENANT = "acme"
NOW = dt.datetime(2026, 12, 6, 9, tzinfo=dt.UTC)
CONVERSATION = common_pb2.Conversation(id="c-1", user_id="u-1", channel=common_pb2.CHANNEL_TYPE_WEB)


async def _setup() -> tuple[MemorySessions, CommittedPush, common_pb2.Session]:
    sessions = MemorySessions()
    push = CommittedPush(live=QuietLiveEvents(RecordingLiveEvents(sessions)), sessions=sessions)
    session, _ = await sessions.get_or_create(TENANT, CONVERSATION, now=NOW)
    return sessions, push, session


def _set(key: str, value: object):  # type: ignore[no-untyped-def]
    def change(session: common_pb2.Session) -> common_pb2.Session:
        session.context.update({key: value})
        return session

    return change


async def test_the_exchanges_updates_go_onto_a_session_updated_meanwhile() -> None:
    sessions, push, read = await _setup()
    await sessions.update(TENANT, read.id, _set("plan", "gold"))  # UpdateSessionContext
    stale = copy.deepcopy(read)
    stale.context.update({"last_intent": "greeting"})  # what the responder did to its copy

    await push.messages(
        TENANT, CONVERSATION, [], stale, now=NOW, context_updates={"last_intent": "greeting"}
    )

    stored = await sessions.get(TENANT, read.id)
    assert stored is not None
    assert dict(stored.context) == {"plan": "gold", "last_intent": "greeting"}
    assert stored.revision == 2


async def test_an_ended_session_stays_ended() -> None:
    sessions, push, read = await _setup()
    ended = await sessions.end(TENANT, copy.deepcopy(read), now=NOW)
    assert ended is not None

    await push.messages(TENANT, CONVERSATION, [], read, now=NOW, context_updates={"x": 1})

    stored = await sessions.get(TENANT, read.id)
    assert stored is not None
    assert stored.status == common_pb2.SESSION_STATUS_ENDED
    assert "x" not in stored.context
    assert await sessions.current(TENANT, CONVERSATION.id, now=NOW) is None
