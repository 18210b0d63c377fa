"""The bridge's forwarder sends a webhook's events in one IngestEvents call the server applies
well inside the forward deadline, or, when they do not fit in one, in calls the server stores
whole and applies after answering; the order is kept either way. A tenant's webhooks that
arrive while its calls are all in flight go together in the next call, each answered with its
own results."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Sequence

import pytest

from chat.v1 import ingest_service_pb2
from server.api.ingest import MAX_EVENTS
from webhook_bridge import forwarder
from webhook_bridge.forwarder import (
    MAX_BATCH,
    MAX_MESSAGES,
    MAX_QUEUED_BATCH,
    Results,
    ServerUnavailableError,
    _calls,
    _Lane,
)


def event(n: int, kind: str) -> ingest_service_pb2.InboundEvent:
    made = ingest_service_pb2.InboundEvent(platform_event_id=f"ev-{n}")
    if kind == "message":
        made.message.platform_message_id = f"wamid.{n}"
    else:
        made.status.platform_message_ids.append(f"wamid.{n}")
    return made


def test_a_webhook_that_fits_one_call_is_applied_within_it() -> None:
    events = [event(n, "message" if n < MAX_MESSAGES else "status") for n in range(MAX_BATCH)]

    calls, apply_later = _calls(events)

    assert calls == [events]
    assert apply_later is False


def test_more_messages_than_one_call_holds_go_in_order_to_be_applied_later() -> None:
    events = [event(n, "message" if n % 3 == 0 else "status") for n in range(5000)]

    calls, apply_later = _calls(events)

    assert apply_later is True
    assert [e.platform_event_id for call in calls for e in call] == [
        e.platform_event_id for e in events
    ]
    assert [len(call) for call in calls] == [MAX_QUEUED_BATCH] * 5


def test_one_message_too_many_is_enough_to_apply_later() -> None:
    calls, apply_later = _calls([event(n, "message") for n in range(MAX_MESSAGES + 1)])

    assert apply_later is True
    assert [len(call) for call in calls] == [MAX_MESSAGES + 1]


def test_statuses_beyond_one_call_go_in_calls_as_large_as_the_server_takes() -> None:
    calls, apply_later = _calls([event(n, "status") for n in range(2 * MAX_QUEUED_BATCH + 1)])

    assert apply_later is True
    assert [len(call) for call in calls] == [MAX_QUEUED_BATCH, MAX_QUEUED_BATCH, 1]
    assert MAX_QUEUED_BATCH == MAX_EVENTS  # as many as the server takes in one call


Events = Sequence[ingest_service_pb2.InboundEvent]
WEBHOOK: contextvars.ContextVar[str] = contextvars.ContextVar("webhook", default="")


class FakeServer:
    """IngestEvents as the lane sees it: each call held until the test lets it answer, with
    one ACCEPTED result per event naming the event."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.traceparents: list[list[str]] = []
        self.sizes: list[int] = []
        self.within: list[float] = []
        self.release = asyncio.Event()
        self.fail_with: Exception | None = None

    async def send(self, events: Events, within: float) -> list[ingest_service_pb2.IngestResult]:
        self.calls.append([e.platform_event_id for e in events])
        self.within.append(within)
        self.traceparents.append([e.traceparent for e in events])
        await self.release.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return [
            ingest_service_pb2.IngestResult(
                platform_event_id=e.platform_event_id,
                outcome=ingest_service_pb2.INGEST_OUTCOME_ACCEPTED,
            )
            for e in events
        ]


def lane(server: FakeServer, calls_at_once: int = 1) -> _Lane:
    return _Lane("acme", server.send, calls_at_once=calls_at_once, on_call=server.sizes.append)


def webhook(
    name: str, count: int = 1, kind: str = "message"
) -> list[ingest_service_pb2.InboundEvent]:
    made = [event(n, kind) for n in range(count)]
    for n, each in enumerate(made):
        each.platform_event_id = f"{name}-{n}"
    return made


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def behind_a_call(
    forwarding: _Lane, names: str, count: int = 1
) -> tuple[asyncio.Task[Results], list[asyncio.Task[Results]]]:
    """Webhook "a" in the one call in flight, then webhooks ``names`` (``count`` events each)
    waiting behind it."""
    first = asyncio.ensure_future(forwarding.forward(webhook("a")))
    await settle()
    waiting = [asyncio.ensure_future(forwarding.forward(webhook(n, count))) for n in names]
    await settle()
    return first, waiting


async def test_a_lone_webhook_goes_at_once_in_a_call_of_its_own() -> None:
    server = FakeServer()
    server.release.set()

    results = await lane(server).forward(webhook("a", 2))

    assert server.calls == [["a-0", "a-1"]]
    assert [r.platform_event_id for r in results] == ["a-0", "a-1"]
    assert server.sizes == [1]


async def test_webhooks_arriving_while_the_calls_are_in_flight_go_together_in_order() -> None:
    server = FakeServer()
    forwarding = lane(server, calls_at_once=1)
    first, waiting = await behind_a_call(forwarding, "bcd", 2)
    assert server.calls == [["a-0"]]  # the others wait for the call in flight

    server.release.set()
    answered = await asyncio.gather(first, *waiting)

    assert server.calls == [["a-0"], ["b-0", "b-1", "c-0", "c-1", "d-0", "d-1"]]
    assert server.sizes == [1, 3]
    assert [[r.platform_event_id for r in results] for results in answered] == [
        ["a-0"],
        ["b-0", "b-1"],
        ["c-0", "c-1"],
        ["d-0", "d-1"],
    ]


async def test_up_to_calls_at_once_webhooks_go_each_at_once() -> None:
    server = FakeServer()
    forwarding = lane(server, calls_at_once=3)
    pending = [asyncio.ensure_future(forwarding.forward(webhook(n))) for n in "abcd"]
    await settle()

    assert server.calls == [["a-0"], ["b-0"], ["c-0"]]
    server.release.set()
    await asyncio.gather(*pending)
    assert server.calls[3:] == [["d-0"]]


async def test_a_call_holds_no_more_messages_or_events_than_one_call_may() -> None:
    server = FakeServer()
    forwarding = lane(server, calls_at_once=1)
    first = asyncio.ensure_future(forwarding.forward(webhook("a")))
    await settle()
    # 30 + 30 messages exceed MAX_MESSAGES (50); 300 + 300 statuses exceed MAX_BATCH (500).
    shapes = [
        ("b", 30, "message"),
        ("c", 30, "message"),
        ("d", 300, "status"),
        ("e", 300, "status"),
    ]
    waiting = [asyncio.ensure_future(forwarding.forward(webhook(*shape))) for shape in shapes]
    await settle()

    server.release.set()
    await asyncio.gather(first, *waiting)

    assert [len(call) for call in server.calls] == [1, 30, 330, 300]
    assert server.sizes == [1, 1, 2, 1]
    for call in server.calls:
        assert sum(not e.startswith(("d", "e")) for e in call) <= MAX_MESSAGES
        assert len(call) <= MAX_BATCH


@pytest.mark.parametrize(
    ("failure", "code"),
    [(ServerUnavailableError("UNAVAILABLE"), "UNAVAILABLE"), (RuntimeError("a bug"), "INTERNAL")],
)
async def test_a_failed_call_refuses_every_webhook_it_carried_each_with_its_own_error(
    failure: Exception, code: str
) -> None:
    server = FakeServer()
    forwarding = lane(server, calls_at_once=1)
    first, waiting = await behind_a_call(forwarding, "bc")
    server.fail_with = failure

    server.release.set()
    answered = await asyncio.gather(first, *waiting, return_exceptions=True)

    assert server.calls == [["a-0"], ["b-0", "c-0"]]
    assert [type(a) for a in answered] == [ServerUnavailableError] * 3
    assert [str(a) for a in answered] == [code] * 3
    assert len({id(a) for a in answered}) == 3  # no traceback shared between webhooks


async def test_a_webhook_that_waits_past_the_deadline_is_refused_and_left_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(forwarder, "FORWARD_TIMEOUT_SECONDS", 0.05)
    monkeypatch.setattr(forwarder, "MAX_WAIT_SECONDS", 10.0)
    server = FakeServer()
    forwarding = lane(server, calls_at_once=1)
    first = asyncio.ensure_future(forwarding.forward(webhook("a")))
    await settle()
    late = asyncio.ensure_future(forwarding.forward(webhook("b")))

    with pytest.raises(ServerUnavailableError, match="DEADLINE_EXCEEDED"):
        await late
    with pytest.raises(ServerUnavailableError, match="DEADLINE_EXCEEDED"):
        await first  # its call is still held by the server
    on_time = asyncio.ensure_future(forwarding.forward(webhook("c")))
    server.release.set()
    await asyncio.sleep(0.01)
    await on_time

    assert server.calls == [["a-0"], ["c-0"]]  # b's deadline passed before a call took it


async def test_a_call_runs_in_its_first_webhooks_context_and_carries_the_others_traces(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    traces = iter(["00-aaaa-01", "00-bbbb-01", "00-cccc-01"])
    monkeypatch.setattr(forwarder, "current_traceparent", lambda: next(traces))
    server = FakeServer()
    sent_in: list[str] = []

    async def send(events: Events, within: float) -> list[ingest_service_pb2.IngestResult]:
        sent_in.append(WEBHOOK.get())
        return await server.send(events, within)

    forwarding = _Lane("acme", send, calls_at_once=1, on_call=server.sizes.append)

    async def from_webhook(name: str, count: int) -> object:
        WEBHOOK.set(name)
        return await forwarding.forward(webhook(name, count))

    first = asyncio.ensure_future(from_webhook("a", 1))
    await settle()
    waiting = [asyncio.ensure_future(from_webhook(n, 2)) for n in "bc"]
    await settle()

    server.release.set()
    await asyncio.gather(first, *waiting)

    # Each call's gRPC span is its first webhook's child; the others' events name their own.
    assert sent_in == ["a", "b"]
    assert server.traceparents == [[""], ["", "", "00-cccc-01", "00-cccc-01"]]


async def test_a_webhook_that_has_waited_long_enough_goes_in_a_call_beyond_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(forwarder, "MAX_WAIT_SECONDS", 0.2)
    server = FakeServer()
    forwarding = lane(server, calls_at_once=1)
    first, waiting = await behind_a_call(forwarding, "bc")
    assert server.calls == [["a-0"]]

    await asyncio.sleep(0.4)  # past MAX_WAIT_SECONDS; the first call is still in flight

    assert server.calls == [["a-0"], ["b-0", "c-0"]]
    server.release.set()
    await asyncio.gather(first, *waiting)
    # The call that went beyond the limit had only the time its webhooks had left: their
    # 2 s less the 0.2 s or more they waited (a fresh call would have had the whole 2 s).
    full = forwarder.FORWARD_TIMEOUT_SECONDS
    assert full - 0.15 < server.within[0] <= full
    assert full - 1.0 < server.within[1] < full - 0.15


async def test_a_webhook_given_up_while_waiting_is_left_out_and_the_lane_goes_on() -> None:
    server = FakeServer()
    forwarding = lane(server, calls_at_once=1)
    first = asyncio.ensure_future(forwarding.forward(webhook("a")))
    await settle()
    gone = asyncio.ensure_future(forwarding.forward(webhook("b")))
    kept = asyncio.ensure_future(forwarding.forward(webhook("c")))
    await settle()
    gone.cancel()  # its client went away
    await settle()
    server.fail_with = ServerUnavailableError("UNAVAILABLE")
    server.release.set()
    answered = await asyncio.gather(first, kept, return_exceptions=True)
    assert [type(a) for a in answered] == [ServerUnavailableError] * 2
    server.fail_with = None

    later = await forwarding.forward(webhook("d"))  # a failed call leaves no slot taken

    assert server.calls == [["a-0"], ["c-0"], ["d-0"]]
    assert [r.platform_event_id for r in later] == ["d-0"]


async def test_the_bridge_stopping_mid_call_refuses_the_calls_webhooks() -> None:
    server = FakeServer()
    forwarding = lane(server, calls_at_once=1)
    first = asyncio.ensure_future(forwarding.forward(webhook("a")))
    await settle()
    for call in list(forwarding._calls):
        call.cancel()

    with pytest.raises(ServerUnavailableError, match="CANCELLED"):
        await first
