"""The event router: registration, routing by type, retries with backoff, permanent errors."""

from __future__ import annotations

import datetime as dt

import pytest

from chat.v1 import events_pb2
from server.events.envelopes import envelope
from server.worker.router import EventRouter, PermanentError, Registration, RetryPolicy


class Recorder:
    def __init__(self) -> None:
        self.successes: list[tuple[str, str]] = []
        self.failures: list[tuple[str, str]] = []

    def handled(self, handler: str, event_type: str, seconds: float) -> None:
        assert seconds >= 0
        self.successes.append((handler, event_type))

    def failed(self, handler: str, event_type: str) -> None:
        self.failures.append((handler, event_type))


class Handler:
    def __init__(self, name: str, failures: int = 0, error: type[Exception] = RuntimeError) -> None:
        self.name = name
        self.failures = failures
        self.error = error
        self.calls = 0

    async def handle(self, envelope: events_pb2.EventEnvelope) -> None:
        assert envelope.event_id
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error("nope")


def received() -> events_pb2.EventEnvelope:
    return envelope(
        tenant_id="t",
        conversation_id="c",
        actor_id="a",
        now=dt.datetime.now(dt.UTC),
        message_received=events_pb2.MessageReceived(),
    )


async def test_routing_by_type_and_retries_with_growing_delays() -> None:
    flaky, other, unrelated = Handler("flaky", failures=2), Handler("other"), Handler("unrelated")
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    observer = Recorder()
    router = EventRouter(
        [
            Registration(flaky, frozenset({"message_received"})),
            Registration(other, frozenset({"message_received", "message_sent"})),
            Registration(unrelated, frozenset({"session_ended"})),
        ],
        retry=RetryPolicy(attempts=4, base_delay_seconds=0.1, max_delay_seconds=1),
        observer=observer,
        sleep=sleep,
    )
    assert await router.dispatch(received()) == []
    assert (flaky.calls, other.calls, unrelated.calls) == (3, 1, 0)
    assert len(delays) == 2
    assert 0.05 <= delays[0] <= 0.1  # equal jitter: in [ceiling / 2, ceiling]
    assert 0.1 <= delays[1] <= 0.2
    assert observer.failures == [("flaky", "message_received")] * 2
    assert sorted(observer.successes) == [
        ("flaky", "message_received"),
        ("other", "message_received"),
    ]


async def test_the_last_failure_is_reported_and_permanent_errors_are_not_retried() -> None:
    async def sleep(_: float) -> None:
        return None

    broken = Handler("broken", failures=99)
    wrong = Handler("wrong", failures=99, error=PermanentError)
    router = EventRouter(
        [
            Registration(broken, frozenset({"message_received"})),
            Registration(wrong, frozenset({"message_received"})),
        ],
        retry=RetryPolicy(attempts=3),
        observer=Recorder(),
        sleep=sleep,
    )
    failures = sorted(await router.dispatch(received()), key=lambda f: f.handler)
    assert [(f.handler, f.attempts) for f in failures] == [("broken", 3), ("wrong", 1)]
    assert failures[0].error == "RuntimeError: nope"


def test_delays_are_capped() -> None:
    policy = RetryPolicy(attempts=10, base_delay_seconds=1, max_delay_seconds=5)
    assert all(policy.delay(attempt) <= 5 for attempt in range(1, 11))


def test_handler_names_are_unique() -> None:
    with pytest.raises(ValueError, match="unique"):
        EventRouter(
            [Registration(Handler("x"), frozenset()), Registration(Handler("x"), frozenset())],
            retry=RetryPolicy(),
            observer=Recorder(),
        )
