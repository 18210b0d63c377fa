"""The stream's ordering rules, with in-memory fakes: gaps are filled from storage,
duplicates skipped, a catch-up marker reads storage, closing ends the stream."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import time
from typing import Any

import pytest

from chat.v1 import chat_service_pb2 as chat
from chat.v1 import common_pb2 as c
from server.domain.errors import NotFound, ResourceExhausted
from server.repositories.live import Subscription
from server.services import streams
from server.services.live import QuietLiveEvents, closed_event, message_event
from server.services.streams import StreamService

Event = chat.StreamConversationEventsResponse


class Storage:
    """Just enough of the conversation and message repositories."""

    def __init__(self) -> None:
        self.conversation = c.Conversation(
            id="c1", status=c.CONVERSATION_STATUS_ACTIVE, last_sequence=0
        )
        self.messages: list[c.Message] = []

    def add(self, count: int) -> list[c.Message]:
        added = []
        for _ in range(count):
            self.conversation.last_sequence += 1
            message = c.Message(id=f"m{self.conversation.last_sequence}", conversation_id="c1")
            message.sequence = self.conversation.last_sequence
            self.messages.append(message)
            added.append(message)
        return added

    async def get(self, tenant_id: str, conversation_id: str, **_: Any) -> c.Conversation | None:
        return self.conversation if (tenant_id, conversation_id) == ("t1", "c1") else None

    async def history(
        self, tenant_id: str, conversation_id: str, *, after_sequence: int | None, **_: Any
    ) -> list[c.Message]:
        if (tenant_id, conversation_id) != ("t1", "c1"):
            return []
        return [m for m in self.messages if m.sequence > (after_sequence or 0)]


class Subscriptions:
    def __init__(self, limit: int = 100) -> None:
        self.current = Subscription("c1", limit)
        self.active = 0

    async def subscribe(self, tenant_id: str, conversation_id: str) -> Subscription:
        assert (tenant_id, conversation_id) == ("t1", "c1")
        self.active += 1
        return self.current

    async def unsubscribe(self, subscription: Any) -> None:
        assert subscription is self.current
        self.active -= 1


class NoLive:
    async def publish(self, *_: Any) -> None:
        raise AssertionError("streams never publish")


def service(storage: Storage, subscriptions: Subscriptions) -> StreamService:
    return StreamService(
        conversations=storage,  # type: ignore[arg-type]
        messages=storage,  # type: ignore[arg-type]
        subscriptions=subscriptions,
        live=QuietLiveEvents(NoLive()),
        outbox=None,  # type: ignore[arg-type]
        requests=None,  # type: ignore[arg-type]
        transactions=None,  # type: ignore[arg-type]
        clock=lambda: dt.datetime.now(dt.UTC),
    )


async def collect(stream: Any, count: int) -> list[Event]:
    return [await asyncio.wait_for(anext(stream), 2) for _ in range(count)]


def sequences(events: list[Event]) -> list[int]:
    return [e.message.sequence for e in events]


async def test_gaps_are_filled_duplicates_skipped_and_markers_read_storage() -> None:
    storage, subscriptions = Storage(), Subscriptions()
    storage.add(2)
    stream = service(storage, subscriptions).stream(
        "t1", "c1", after_sequence=None, expires_at=math.inf
    )
    first = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)
    queue = subscriptions.current
    three, four, five = storage.add(3)
    queue.offer(message_event(five))  # 3 and 4 were published late, or lost
    queue.offer(message_event(three))  # late: already sent
    queue.offer(message_event(four))
    assert sequences([await first, *await collect(stream, 2)]) == [3, 4, 5]
    six, seven = storage.add(2)
    queue.offer(message_event(six))
    queue.offer(None)  # the hub lost its connection: 7 comes from storage
    assert sequences(await collect(stream, 2)) == [6, 7]
    queue.offer(message_event(seven))  # and its late publish is not sent again
    storage.conversation.status = c.CONVERSATION_STATUS_CLOSED
    queue.offer(closed_event(storage.conversation))
    [closed] = await collect(stream, 1)
    assert closed.WhichOneof("event") == "closed"
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    assert subscriptions.active == 0


async def test_replay_then_live() -> None:
    storage, subscriptions = Storage(), Subscriptions()
    storage.add(3)
    stream = service(storage, subscriptions).stream(
        "t1", "c1", after_sequence=1, expires_at=math.inf
    )
    assert sequences(await collect(stream, 2)) == [2, 3]
    [four] = storage.add(1)
    subscriptions.current.offer(message_event(four))
    assert sequences(await collect(stream, 1)) == [4]
    await stream.aclose()
    assert subscriptions.active == 0


async def test_a_message_sent_once_the_stream_is_live_reaches_it() -> None:
    """on_live (the response headers) comes after the stream fixed where it starts, so a
    message its caller sends on seeing the headers is not taken for one from before."""
    storage, subscriptions = Storage(), Subscriptions()
    storage.add(1)
    published: list[c.Message] = []

    async def send_on_headers() -> None:
        [message] = storage.add(1)
        subscriptions.current.offer(message_event(message))
        published.append(message)

    stream = service(storage, subscriptions).stream(
        "t1", "c1", after_sequence=None, expires_at=math.inf, on_live=send_on_headers
    )
    assert sequences(await collect(stream, 1)) == [2]
    assert [m.sequence for m in published] == [2]
    await stream.aclose()


async def test_an_overflowing_subscriber_is_told_to_reconnect() -> None:
    storage, subscriptions = Storage(), Subscriptions(limit=2)
    stream = service(storage, subscriptions).stream(
        "t1", "c1", after_sequence=None, expires_at=math.inf
    )
    pending = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)
    for n in range(4):
        subscriptions.current.offer(Event(typing=chat.TypingIndicator(participant_id=f"p{n}")))
    with pytest.raises(ResourceExhausted) as caught:
        await asyncio.wait_for(pending, 2)
    assert caught.value.reason == "SUBSCRIBER_TOO_SLOW"
    assert subscriptions.active == 0


async def test_another_tenants_conversation_is_not_found() -> None:
    stream = service(Storage(), Subscriptions()).stream(
        "t2", "c1", after_sequence=0, expires_at=math.inf
    )
    with pytest.raises(NotFound):
        await anext(stream)


async def test_a_quiet_stream_looks_at_storage(monkeypatch: pytest.MonkeyPatch) -> None:
    """A message whose publish was lost reaches the stream once it has been quiet a while."""
    monkeypatch.setattr(streams, "IDLE_CHECK_SECONDS", 0.1)
    storage, subscriptions = Storage(), Subscriptions()
    storage.add(1)
    stream = service(storage, subscriptions).stream(
        "t1", "c1", after_sequence=None, expires_at=math.inf
    )
    pending = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)
    storage.add(1)  # stored, never published
    assert sequences([await asyncio.wait_for(pending, 2)]) == [2]
    storage.add(1)  # and again: the timer is set again after it fired
    assert sequences(await collect(stream, 1)) == [3]
    await stream.aclose()


async def test_events_cost_the_subscription_no_timer_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Twenty events, each waited for: the idle timer is set once, not once per wait (a
    timeout per wait set and cancelled a timer every time)."""
    loop = asyncio.get_running_loop()
    timers: list[str] = []  # what each timer set by a subscription or a timeout would call
    call_at = loop.call_at  # call_later goes through it too
    ours: set[asyncio.Task[Any] | None] = set()  # this test's tasks, not others on the loop

    def counting(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        name = getattr(callback, "__qualname__", "")
        if name.startswith(("Subscription.", "Timeout.")) and asyncio.current_task() in ours:
            timers.append(name)
        return call_at(when, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", counting)
    subscription = Subscription("c1", 100)
    heard: list[Event | None] = []

    async def read() -> None:
        for _ in range(20):
            heard.append(await subscription.next(idle_seconds=30, deadline=time.monotonic() + 60))

    reader = asyncio.ensure_future(read())
    ours.update({reader, asyncio.current_task()})
    for n in range(20):
        await asyncio.sleep(0)  # the reader is waiting on an empty queue
        subscription.offer(Event(typing=chat.TypingIndicator(participant_id=f"p{n}")))
    await asyncio.wait_for(reader, 2)
    assert len(heard) == 20
    assert None not in heard
    assert timers == ["Subscription._on_timer"]
    subscription.discard()


async def test_a_subscription_wakes_when_quiet_and_at_its_deadline() -> None:
    quiet = Subscription("c1", 100)
    assert await asyncio.wait_for(quiet.next(idle_seconds=0.1), 2) is None
    quiet.offer(Event(typing=chat.TypingIndicator(participant_id="p")))
    assert (await quiet.next(idle_seconds=0.1)) is not None  # what was queued comes first
    due = Subscription("c1", 100)
    assert await asyncio.wait_for(due.next(deadline=time.monotonic() + 0.1), 2) is None
