"""Forwards normalized events to the chat server's IngestService."""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog

from chat.v1 import ingest_service_pb2, ingest_service_pb2_grpc
from server.tracing.spans import current_traceparent
from webhook_bridge.tokens import ServiceTokens

log = structlog.get_logger("chat.bridge.forward")

#: Well inside every platform's deadline (Slack's 3 s is the shortest). A webhook that fits
#: one call is answered within it from the moment it is handed to the forwarder, its wait for
#: a call included; a larger one gives each of its calls as long.
FORWARD_TIMEOUT_SECONDS = 2.0
#: Events per IngestEvents call (the server takes up to 1,000), and messages among them. The
#: server applies a call's statuses together, at about a millisecond each on the embedded
#: store; a message from a new user starts a conversation, near 10 ms each. These sizes keep
#: the slowest call near a quarter of FORWARD_TIMEOUT_SECONDS on a slow machine.
MAX_BATCH = 500
MAX_MESSAGES = 50
#: A webhook that one call of that size does not hold (a 1 MiB WhatsApp webhook holds some
#: 9,000 statuses or 8,000 messages) would take many such calls, longer than the platform
#: waits: its events go instead with ``apply_later``, as many as the server takes in one call
#: (1,000), each call a single write to the server's inbox, and are applied shortly after the
#: platform's 200. The calls are made one after another, so a user's events keep their order.
MAX_QUEUED_BATCH = 1000
#: IngestEvents calls of one tenant in flight at once. Webhooks that arrive while all are in
#: flight wait for the first to end and then go together, in arrival order, in one call (as
#: many as a call holds): a busy tenant's webhooks cost the bridge and the server one call,
#: one authentication and one read of the events seen before for each group, not for each
#: webhook. A lone webhook never waits: it goes at once, alone.
CALLS_AT_ONCE = 4
#: The longest a webhook waits for one of those calls to end: then it goes at once, with the
#: others waiting, in a call beyond CALLS_AT_ONCE, so that a slow server leaves it at least
#: three quarters of FORWARD_TIMEOUT_SECONDS for its call.
MAX_WAIT_SECONDS = FORWARD_TIMEOUT_SECONDS / 4
#: The channel's reconnect backoff after the server went away: gRPC's default grows from 1 s
#: to 120 s, so after a long outage the bridge would go on refusing webhooks for up to two
#: minutes once the server is back. Attempts at most a second apart (plus gRPC's 20% jitter)
#: keep a webhook arriving just after a restart within FORWARD_TIMEOUT_SECONDS. (Not
#: grpc.min_reconnect_backoff_ms: despite its name, gRPC core takes it as the time one
#: connection attempt may take.)
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)

Events = Sequence[ingest_service_pb2.InboundEvent]
Results = list[ingest_service_pb2.IngestResult]


class ServerUnavailableError(Exception):
    """The server could not take the events: answer the platform 503 so it retries."""


class Forwarder:
    """A webhook that fits one call (at most MAX_BATCH events, MAX_MESSAGES of them messages)
    is applied within it, together with the tenant's other webhooks waiting for a call; a
    larger one goes alone, in calls of MAX_QUEUED_BATCH events applied later."""

    def __init__(
        self,
        *,
        channel: grpc.aio.Channel,
        tokens: ServiceTokens,
        calls_at_once: int = CALLS_AT_ONCE,
        on_call: Callable[[int], None] = lambda _webhooks: None,
    ) -> None:
        self._stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
        self._tokens = tokens
        self._calls_at_once = calls_at_once
        self._on_call = on_call
        self._lanes: dict[str, _Lane] = {}

    async def forward(self, tenant_id: str, events: Events) -> Results:
        """The results of every event, in order; ServerUnavailableError when the server did
        not store them (the platform's retry is then deduplicated by the server)."""
        calls, apply_later = _calls(events)
        if not apply_later:
            lane = self._lanes.get(tenant_id)
            if lane is None:
                lane = self._lanes[tenant_id] = _Lane(
                    tenant_id,
                    lambda events, within: self._call(
                        tenant_id, events, apply_later=False, within=within
                    ),
                    calls_at_once=self._calls_at_once,
                    on_call=self._on_call,
                )
            return await lane.forward(events)
        results: Results = []
        for chunk in calls:
            results.extend(await self._call(tenant_id, chunk, apply_later=True))
        return results

    async def _call(
        self,
        tenant_id: str,
        events: Events,
        *,
        apply_later: bool,
        within: float = FORWARD_TIMEOUT_SECONDS,
    ) -> Results:
        metadata = (("authorization", f"Bearer {self._tokens.for_tenant(tenant_id)}"),)
        request = ingest_service_pb2.IngestEventsRequest(events=events, apply_later=apply_later)
        try:
            # wait_for_ready: a server back after a restart is reached within the deadline,
            # not refused because the connection is still waiting out its reconnect backoff.
            response = await self._stub.IngestEvents(
                request,
                metadata=metadata,
                timeout=within,
                wait_for_ready=True,
            )
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "events not forwarded",
                tenant_id=tenant_id,
                code=exc.code().name,
                details=exc.details(),
            )
            raise ServerUnavailableError(exc.code().name) from None
        if len(response.results) != len(events):
            log.error(
                "the server answered a call with the wrong number of results",
                tenant_id=tenant_id,
                events=len(events),
                results=len(response.results),
            )
            raise ServerUnavailableError("INTERNAL")
        return list(response.results)


@dataclass(slots=True)
class _Webhook:
    """One webhook's events waiting for a call, and where its results go."""

    events: Events
    messages: int
    answer: asyncio.Future[Results]
    #: When it must be answered (the loop's clock): FORWARD_TIMEOUT_SECONDS after it came.
    deadline: float
    #: The webhook's own trace, carried on its events when another webhook's call takes them.
    traceparent: str
    #: The webhook's context: a call runs in its first webhook's, so its span is that
    #: webhook's child.
    context: contextvars.Context = field(default_factory=contextvars.copy_context)
    #: Taken into a call; ``carried``: into a call another webhook leads.
    taken: bool = False
    carried: bool = False


Send = Callable[[Events, float], Coroutine[Any, Any, Results]]


class _Lane:
    """One tenant's calls: at most ``calls_at_once`` in flight, unless a webhook has waited
    MAX_WAIT_SECONDS; the webhooks waiting go in arrival order, as many together as one call
    holds."""

    def __init__(
        self,
        tenant_id: str,
        send: Send,
        *,
        calls_at_once: int,
        on_call: Callable[[int], None],
    ) -> None:
        self._tenant_id = tenant_id
        self._send = send
        self._calls_at_once = calls_at_once
        self._on_call = on_call
        self._waiting: deque[_Webhook] = deque()
        self._in_flight = 0
        self._calls: set[asyncio.Task[None]] = set()

    async def forward(self, events: Events) -> Results:
        loop = asyncio.get_running_loop()
        webhook = _Webhook(
            events=events,
            messages=_messages(events),
            answer=loop.create_future(),
            deadline=loop.time() + FORWARD_TIMEOUT_SECONDS,
            traceparent=current_traceparent(),
        )
        self._waiting.append(webhook)
        self._start()
        overdue = (
            None if webhook.taken else loop.call_later(MAX_WAIT_SECONDS, self._overdue, webhook)
        )
        try:
            # Cancelled at the deadline: a call not yet made leaves this webhook out; one made
            # may still store its events (the platform's retry is a duplicate then).
            async with asyncio.timeout_at(webhook.deadline):
                return await webhook.answer
        except TimeoutError:
            log.warning("webhook not answered in time", tenant_id=self._tenant_id)
            raise ServerUnavailableError("DEADLINE_EXCEEDED") from None
        except ServerUnavailableError as exc:
            if webhook.carried:  # the call's failure was logged in its first webhook's trace
                log.warning("events not forwarded", tenant_id=self._tenant_id, code=str(exc))
            raise
        finally:
            if overdue is not None:
                overdue.cancel()

    def _start(self) -> None:
        while self._in_flight < self._calls_at_once and self._begin():
            pass

    def _overdue(self, webhook: _Webhook) -> None:
        """The webhook has waited long enough: it goes now, beyond the calls at once, with
        the webhooks ahead of it (they have waited longer)."""
        while not webhook.taken and not webhook.answer.done() and self._begin():
            pass

    def _begin(self) -> bool:
        """Start a call with the next webhooks; False when none waits."""
        group = self._take()
        if not group:
            return False
        self._in_flight += 1
        call = asyncio.get_running_loop().create_task(self._call(group), context=group[0].context)
        self._calls.add(call)
        call.add_done_callback(self._calls.discard)
        return True

    def _take(self) -> list[_Webhook]:
        """The next webhooks in arrival order, as many as one call holds (the first always),
        those no longer waiting (past their deadline) left out."""
        group: list[_Webhook] = []
        events = messages = 0
        while self._waiting:
            webhook = self._waiting[0]
            if webhook.answer.done():
                self._waiting.popleft()
                continue
            if group and (
                events + len(webhook.events) > MAX_BATCH
                or messages + webhook.messages > MAX_MESSAGES
            ):
                break
            self._waiting.popleft()
            webhook.taken = True
            webhook.carried = bool(group)
            group.append(webhook)
            events += len(webhook.events)
            messages += webhook.messages
        return group

    async def _call(self, group: list[_Webhook]) -> None:
        try:
            for webhook in group[1:]:
                if webhook.traceparent:
                    for event in webhook.events:
                        event.traceparent = webhook.traceparent
            self._on_call(len(group))
            # No longer than any of its webhooks waits for it.
            timeout = max(w.deadline for w in group) - asyncio.get_running_loop().time()
            try:
                results = await self._send(
                    [event for webhook in group for event in webhook.events], max(timeout, 0.0)
                )
            except ServerUnavailableError as exc:
                self._fail(group, str(exc))
                return
            except asyncio.CancelledError:  # the bridge is stopping
                self._fail(group, "CANCELLED")
                raise
            except Exception:  # a bug of ours: logged once, each webhook answered 503
                log.exception("events not forwarded", tenant_id=self._tenant_id)
                self._fail(group, "INTERNAL")
                return
            start = 0
            for webhook in group:
                end = start + len(webhook.events)
                if not webhook.answer.done():
                    webhook.answer.set_result(results[start:end])
                start = end
        finally:
            self._in_flight -= 1
            self._start()

    @staticmethod
    def _fail(group: list[_Webhook], code: str) -> None:
        for webhook in group:
            if not webhook.answer.done():
                webhook.answer.set_exception(ServerUnavailableError(code))


def _messages(events: Events) -> int:
    return sum(event.WhichOneof("kind") == "message" for event in events)


def _calls(events: Events) -> tuple[list[list[ingest_service_pb2.InboundEvent]], bool]:
    """The events in order, cut into calls, and whether the calls are to be applied later:
    one call when they fit in MAX_BATCH events and MAX_MESSAGES messages, else calls of
    MAX_QUEUED_BATCH events applied later."""
    if len(events) <= MAX_BATCH and _messages(events) <= MAX_MESSAGES:
        return [list(events)], False
    size = MAX_QUEUED_BATCH
    return [list(events[i : i + size]) for i in range(0, len(events), size)], True
