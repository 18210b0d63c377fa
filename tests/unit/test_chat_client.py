"""chat_client without a server: when calls are retried and how long it waits, cursor pages
walked to the end, and the error a failed call becomes."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2, status_pb2

from chat.v1 import chat_service_pb2 as chat
from chat.v1 import common_pb2 as common
from chat.v1 import delivery_service_pb2 as delivery
from chat_client import ChatClient, ChatError, RetryPolicy


def rpc_error(
    code: grpc.StatusCode,
    *,
    retry_after: float | None = None,
    reason: str = "",
    request_id: str = "",
    violations: tuple[tuple[str, str], ...] = (),
) -> grpc.aio.AioRpcError:
    """A failed call as grpc.aio reports it, with the server's google.rpc.Status details."""
    status = status_pb2.Status(code=code.value[0], message=f"{code.name} from the server")
    if reason:
        info = error_details_pb2.ErrorInfo(reason=reason, domain="chat-service")
        if request_id:
            info.metadata["request_id"] = request_id
        status.details.add().Pack(info)
    if violations:
        bad = error_details_pb2.BadRequest()
        for field, description in violations:
            bad.field_violations.add(field=field, description=description)
        status.details.add().Pack(bad)
    if retry_after is not None:
        delay = Duration()
        delay.FromNanoseconds(int(retry_after * 1e9))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return grpc.aio.AioRpcError(
        code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString())),
        details=status.message,
    )


class Scripted:
    """A unary method answering from a script (a response, or an error to raise), and
    remembering each call's request and metadata."""

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[tuple[Any, dict[str, str], float | None]] = []

    async def __call__(
        self,
        request: Any,
        *,
        metadata: Any,
        timeout: float | None,  # noqa: ASYNC109 - the signature of a gRPC multi-callable
    ) -> Any:
        self.calls.append((request, dict(metadata), timeout))
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


class Clock:
    """Records the waits instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def sleep(self, seconds: float) -> Awaitable[None]:
        self.waits.append(seconds)

        async def done() -> None:
            return None

        return done()


def client(clock: Clock, *, jitter: float = 1.0, **options: Any) -> ChatClient:
    policy = RetryPolicy(attempts=4, base_delay=0.2, max_delay=10.0, jitter=lambda: jitter)
    return ChatClient(
        grpc.aio.insecure_channel("127.0.0.1:9"),
        token=options.pop("token", "t0ken"),
        retry=policy,
        sleep=clock.sleep,
        **options,
    )


async def test_a_read_is_retried_after_the_delay_the_server_asks() -> None:
    clock = Clock()
    reply = chat.GetConversationResponse(conversation=common.Conversation(id="c1"))
    method = Scripted(
        rpc_error(grpc.StatusCode.UNAVAILABLE, retry_after=1.5),
        rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, retry_after=0.7),
        reply,
    )
    got = await client(clock, jitter=0.0).call(
        method, chat.GetConversationRequest(conversation_id="c1")
    )
    assert got.conversation.id == "c1"
    assert clock.waits == [1.5, 0.7]  # never earlier than RetryInfo says
    ids = {metadata["x-request-id"] for _, metadata, _ in method.calls}
    assert len(ids) == 1  # one request id for the call, on every attempt
    assert {metadata["authorization"] for _, metadata, _ in method.calls} == {"Bearer t0ken"}


async def test_backoff_grows_and_the_last_error_is_raised_when_attempts_run_out() -> None:
    clock = Clock()
    method = Scripted(*(rpc_error(grpc.StatusCode.UNAVAILABLE, reason="SHUTTING_DOWN"),) * 4)
    with pytest.raises(ChatError) as caught:
        await client(clock).call(method, chat.ListConversationsRequest())
    assert len(method.calls) == 4
    assert clock.waits == pytest.approx([0.2, 0.4, 0.8])
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert caught.value.reason == "SHUTTING_DOWN"


async def test_the_server_delay_wins_over_a_shorter_backoff_and_a_longer_one_is_not_waited() -> (
    None
):
    clock = Clock()
    method = Scripted(rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, retry_after=60), None)
    with pytest.raises(ChatError) as caught:
        await client(clock).call(method, chat.ListConversationsRequest())
    assert clock.waits == []  # a minute is longer than the policy waits: the caller decides
    assert caught.value.retry_delay == pytest.approx(60)


async def test_a_write_without_a_request_id_is_never_retried() -> None:
    clock = Clock()
    method = Scripted(rpc_error(grpc.StatusCode.UNAVAILABLE, retry_after=0.1), None)
    request = chat.SendMessageRequest(
        user_id="u1", content=common.Content(text=common.TextContent(text="hi"))
    )
    with pytest.raises(ChatError):
        await client(clock).call(method, request)
    assert len(method.calls) == 1
    assert clock.waits == []
    retry = delivery.RetryDeliveryRequest(message_id="m1")
    method = Scripted(rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED), None)
    with pytest.raises(ChatError):
        await client(clock).call(method, retry)
    assert len(method.calls) == 1


async def test_a_write_with_a_request_id_is_retried_with_the_same_request() -> None:
    clock = Clock()
    answer = chat.SendMessageResponse(message=common.Message(id="m1"))
    method = Scripted(rpc_error(grpc.StatusCode.UNAVAILABLE, retry_after=0.3), answer)
    request = chat.SendMessageRequest(request_id="r-1", user_id="u1")
    assert (await client(clock).call(method, request)).message.id == "m1"
    assert [call[0].request_id for call in method.calls] == ["r-1", "r-1"]
    assert clock.waits == [0.3]


async def test_other_failures_are_not_retried_even_for_reads() -> None:
    clock = Clock()
    for code in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    ):
        method = Scripted(rpc_error(code), None)
        with pytest.raises(ChatError) as caught:
            await client(clock).call(method, chat.ListMessagesRequest(conversation_id="c"))
        assert caught.value.code == code
        assert len(method.calls) == 1
    assert clock.waits == []


async def test_pages_are_walked_to_the_last_with_the_filters_kept() -> None:
    def page(ids: list[str], token: str) -> chat.ListConversationsResponse:
        return chat.ListConversationsResponse(
            conversations=[common.Conversation(id=i) for i in ids], next_page_token=token
        )

    method = Scripted(page(["a", "b"], "p2"), page(["c", "d"], "p3"), page(["e"], ""))
    request = chat.ListConversationsRequest(user_id="u1", page_size=2)
    walked = [c.id async for c in client(Clock()).pages(method, request, lambda p: p.conversations)]
    assert walked == ["a", "b", "c", "d", "e"]
    sent = [call[0] for call in method.calls]
    assert [r.page_token for r in sent] == ["", "p2", "p3"]
    assert {(r.user_id, r.page_size) for r in sent} == {("u1", 2)}
    assert request.page_token == ""  # the caller's request is left as it was


async def test_a_limit_stops_the_walk_without_fetching_more_pages() -> None:
    method = Scripted(
        chat.ListMessagesResponse(
            messages=[common.Message(sequence=n) for n in (1, 2, 3)], next_page_token="more"
        )
    )
    pages = client(Clock()).pages(
        method, chat.ListMessagesRequest(conversation_id="c"), lambda p: p.messages, limit=2
    )
    assert [m.sequence async for m in pages] == [1, 2]
    assert len(method.calls) == 1


async def test_a_page_that_fails_for_a_while_is_retried_and_the_walk_goes_on() -> None:
    clock = Clock()
    method = Scripted(
        chat.SearchMessagesResponse(messages=[common.Message(id="1")], next_page_token="p2"),
        rpc_error(grpc.StatusCode.UNAVAILABLE, retry_after=0.5),
        chat.SearchMessagesResponse(messages=[common.Message(id="2")]),
    )
    pages = client(clock).pages(method, chat.SearchMessagesRequest(query="x"), lambda p: p.messages)
    assert [m.id async for m in pages] == ["1", "2"]
    assert clock.waits == [0.5]


async def test_a_token_function_is_asked_before_every_call() -> None:
    issued = iter(["first", "second"])

    async def refresh() -> str:
        return next(issued)

    method = Scripted(chat.GetConversationResponse(), chat.GetConversationResponse())
    chat_client = client(Clock(), token=refresh)
    await chat_client.call(method, chat.GetConversationRequest(conversation_id="c"))
    await chat_client.call(method, chat.GetConversationRequest(conversation_id="c"))
    assert [m["authorization"] for _, m, _ in method.calls] == ["Bearer first", "Bearer second"]


async def test_the_error_carries_the_details_and_reads_as_one_line() -> None:
    method = Scripted(
        rpc_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            reason="INVALID_CONTENT",
            request_id="req-42",
            violations=(("content.location.latitude", "must be within [-90, 90]"),),
        )
    )
    with pytest.raises(ChatError) as caught:
        await client(Clock()).call(method, chat.ListConversationsRequest())
    error = caught.value
    assert (error.code_name, error.reason, error.domain) == (
        "INVALID_ARGUMENT",
        "INVALID_CONTENT",
        "chat-service",
    )
    assert [(v.field, v.description) for v in error.field_violations] == [
        ("content.location.latitude", "must be within [-90, 90]")
    ]
    assert error.request_id == "req-42"
    assert error.retry_delay is None
    assert str(error) == (
        "INVALID_ARGUMENT (INVALID_CONTENT): INVALID_ARGUMENT from the server; "
        "content.location.latitude: must be within [-90, 90] [request id req-42]"
    )


async def test_without_details_the_request_id_sent_is_the_one_quoted() -> None:
    method = Scripted(grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, None, None, "down"))
    request = chat.SendMessageRequest(user_id="u")
    with pytest.raises(ChatError) as caught:
        await client(Clock()).call(method, request, request_id="mine-1")
    assert caught.value.request_id == "mine-1"
    assert method.calls[0][1]["x-request-id"] == "mine-1"
    assert str(caught.value) == "UNAVAILABLE: down [request id mine-1]"
