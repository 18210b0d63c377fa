"""CommittedPush keeps a session that changed meanwhile: the exchange's context updates go
onto the newer session, and an ended session stays ended (the revision's compare-and-set)."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

from chat.v1 import common_pb2
from server.domain.errors import StoreError
from server.services.event_writer import EventWriter
from server.services.live import CommittedPush, QuietLiveEvents
from server.services.sessions import SessionService
from tests.support.memory_stores import MemoryOutbox, MemorySessions, RecordingLiveEvents
from tests.support.ports import Clock, MemoryStores

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


class _FailingOnce:
    """An Outbox whose first add fails, as MongoDB down for a moment would."""

    def __init__(self, outbox: MemoryOutbox) -> None:
        self._outbox = outbox
        self.failed = False

    async def add(self, envelopes: Any, *, now: dt.datetime, tx: Any) -> None:
        if not self.failed:
            self.failed = True
            raise StoreError("the outbox is down")
        await self._outbox.add(envelopes, now=now, tx=tx)


async def test_a_sweep_failure_leaves_the_session_for_the_next_sweep_and_reports_every_one(
    stores: MemoryStores, clock: Clock
) -> None:
    outbox = _FailingOnce(stores.outbox)
    service = SessionService(
        sessions=stores.sessions,
        events=EventWriter(outbox=outbox, transactions=stores.transactions),
        clock=clock,
    )
    users = [f"u-{n}" for n in range(3)]
    for user in users:
        conversation = common_pb2.Conversation(id=f"c-{user}", user_id=user, channel=1)
        await stores.sessions.get_or_create(TENANT, conversation, now=clock())
    clock.advance(hours=1)

    first = await service.expire_due()  # the first report fails: the others still go
    second = await service.expire_due()  # the failed one again, reported this time

    assert outbox.failed
    assert first == 2
    assert second == 0
    ended = [e.session_ended.session.user_id for e in stores.outbox.envelopes]
    assert sorted(ended) == users
    for key in stores.sessions.sessions:
        assert stores.sessions.sessions[key].status == common_pb2.SESSION_STATUS_EXPIRED
