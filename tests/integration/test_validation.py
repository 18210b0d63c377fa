"""A request's problems are reported all at once, in words that fit: an unknown enum value is
called unknown, not "required"."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2

from chat.v1 import chat_service_pb2 as chat
from chat.v1 import chat_service_pb2_grpc, delivery_service_pb2_grpc
from chat.v1 import common_pb2 as c
from chat.v1 import delivery_service_pb2 as delivery
from devstack.tokens import mint_dev_token
from tests.support.chat_client import JWT_SETTINGS, SECRET, TENANTS
from tests.support.error_details import details_of
from tests.support.servers import RunningServer, tenants_file

StartServer = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def channel(start_server: StartServer, tmp_path: Path) -> AsyncIterator[grpc.aio.Channel]:
    server = await start_server(CHAT_TENANTS_FILE=tenants_file(tmp_path, TENANTS), **JWT_SETTINGS)
    async with grpc.aio.insecure_channel(server.target) as channel:
        yield channel


def _metadata() -> tuple[tuple[str, str]]:
    scopes = ("chat:read", "chat:write", "chat:admin")
    token = mint_dev_token(secret=SECRET, tenant_id="acme", subject="acme-app", scopes=scopes)
    return (("authorization", f"Bearer {token}"),)


async def _refused(call: Awaitable[object]) -> dict[str, str]:
    """The field violations of a call that must be INVALID_ARGUMENT, field -> description."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    [bad] = [d for d in details_of(caught.value) if isinstance(d, error_details_pb2.BadRequest)]
    return {v.field: v.description for v in bad.field_violations}


async def test_send_message_reports_every_problem_at_once(channel: grpc.aio.Channel) -> None:
    stub = chat_service_pb2_grpc.ChatServiceStub(channel)
    request = chat.SendMessageRequest(
        user_id="",
        channel=99,  # type: ignore[arg-type]  # a number no ChannelType has
        request_id="r" * 200,
        content=c.Content(location=c.LocationContent(latitude=200, longitude=10)),
    )
    found = await _refused(stub.SendMessage(request, metadata=_metadata(), timeout=10))
    assert set(found) == {"user_id", "channel", "request_id", "content.location.latitude"}
    assert found["channel"].startswith("unknown value 99: one of CHANNEL_TYPE_WEB,")
    assert found["user_id"].startswith("required")


async def test_an_unset_enum_is_required_and_an_unknown_one_is_unknown(
    channel: grpc.aio.Channel,
) -> None:
    stub = chat_service_pb2_grpc.ChatServiceStub(channel)
    unset = chat.SendMessageRequest(user_id="u-1", content=c.Content(text=c.TextContent(text="x")))
    found = await _refused(stub.SendMessage(unset, metadata=_metadata(), timeout=10))
    assert found == {"channel": found["channel"]}
    assert found["channel"].startswith("required: one of CHANNEL_TYPE_WEB,")

    export = stub.ExportConversation(
        chat.ExportConversationRequest(conversation_id="c-1", format=7),  # type: ignore[arg-type]
        metadata=_metadata(),
        timeout=10,
    )
    found = await _refused(export.read())
    assert found == {
        "format": "unknown value 7: one of EXPORT_FORMAT_JSONL, EXPORT_FORMAT_CSV",
    }

    found = await _refused(
        stub.ListMessages(
            chat.ListMessagesRequest(conversation_id="c-1", order=5),  # type: ignore[arg-type]
            metadata=_metadata(),
            timeout=10,
        )
    )
    assert list(found) == ["order"]
    assert found["order"].startswith("unknown value 5")


async def test_list_calls_report_filters_pages_and_ranges_together(
    channel: grpc.aio.Channel,
) -> None:
    stub = chat_service_pb2_grpc.ChatServiceStub(channel)
    found = await _refused(
        stub.ListConversations(
            chat.ListConversationsRequest(
                channel=42,  # type: ignore[arg-type]
                status=17,  # type: ignore[arg-type]
                page_size=-1,
                page_token="not-a-token",
                last_activity_time_range=c.TimeRange(start_time={"seconds": 0, "nanos": -1}),
            ),
            metadata=_metadata(),
            timeout=10,
        )
    )
    assert set(found) == {
        "channel",
        "status",
        "page_size",
        "page_token",
        "last_activity_time_range.start_time",
    }
    assert found["status"].startswith("unknown value 17")

    deliveries = delivery_service_pb2_grpc.DeliveryServiceStub(channel)
    found = await _refused(
        deliveries.ListFailedDeliveries(
            delivery.ListFailedDeliveriesRequest(channel=42, page_size=-5),  # type: ignore[arg-type]
            metadata=_metadata(),
            timeout=10,
        )
    )
    assert set(found) == {"channel", "page_size"}


async def test_stream_and_typing_calls_report_every_problem(channel: grpc.aio.Channel) -> None:
    stub = chat_service_pb2_grpc.ChatServiceStub(channel)
    found = await _refused(
        stub.SendTypingIndicator(
            chat.SendTypingIndicatorRequest(direction=9),  # type: ignore[arg-type]
            metadata=_metadata(),
            timeout=10,
        )
    )
    assert set(found) == {"conversation_id", "participant_id", "direction"}
    assert found["direction"].startswith("unknown value 9")
