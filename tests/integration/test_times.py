"""Times in requests out of a Timestamp's range (negative nanos, seconds past year 9999) are
INVALID_ARGUMENT naming the field, or a REJECTED event; never INTERNAL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from chat.v1 import analytics_service_pb2 as analytics
from chat.v1 import analytics_service_pb2_grpc, chat_service_pb2_grpc, delivery_service_pb2_grpc
from chat.v1 import chat_service_pb2 as chat
from chat.v1 import common_pb2 as c
from chat.v1 import delivery_service_pb2 as delivery
from chat.v1 import ingest_service_pb2 as ingest
from devstack.tokens import mint_dev_token
from tests.support.chat_client import JWT_SETTINGS, SECRET, TENANTS
from tests.support.error_details import violations
from tests.support.ingest import Bridge
from tests.support.servers import RunningServer, tenants_file

StartServer = Callable[..., Awaitable[RunningServer]]
#: 9999-12-31T23:59:59Z, the last second a Timestamp may hold.
LAST_SECOND = 253_402_300_799
BAD_TIMES = [
    c.TimeRange(start_time={"seconds": 0, "nanos": -1}),
    c.TimeRange(end_time={"seconds": LAST_SECOND + 1}),
]


@pytest.fixture
async def channel(start_server: StartServer, tmp_path: Path) -> AsyncIterator[grpc.aio.Channel]:
    server = await start_server(CHAT_TENANTS_FILE=tenants_file(tmp_path, TENANTS), **JWT_SETTINGS)
    async with grpc.aio.insecure_channel(server.target) as channel:
        yield channel


def metadata(*scopes: str) -> tuple[tuple[str, str]]:
    token = mint_dev_token(secret=SECRET, tenant_id="acme", subject="acme-app", scopes=scopes)
    return (("authorization", f"Bearer {token}"),)


async def refused(call: Awaitable[object]) -> list[str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    return violations(caught.value)


async def test_out_of_range_times_are_invalid_arguments(channel: grpc.aio.Channel) -> None:
    stub = chat_service_pb2_grpc.ChatServiceStub(channel)
    deliveries = delivery_service_pb2_grpc.DeliveryServiceStub(channel)
    figures = analytics_service_pb2_grpc.AnalyticsServiceStub(channel)
    reader, admin = metadata("chat:read"), metadata("chat:admin", "chat:read")
    for window in BAD_TIMES:
        end = "start_time" if window.HasField("start_time") else "end_time"
        found = await refused(
            stub.ListConversations(
                chat.ListConversationsRequest(last_activity_time_range=window), metadata=reader
            )
        )
        assert found == [f"last_activity_time_range.{end}"]
        found = await refused(
            stub.SearchMessages(
                chat.SearchMessagesRequest(query="hello", create_time_range=window),
                metadata=reader,
            )
        )
        assert found == [f"create_time_range.{end}"]
        found = await refused(
            deliveries.ListFailedDeliveries(
                delivery.ListFailedDeliveriesRequest(update_time_range=window), metadata=admin
            )
        )
        assert found == [f"update_time_range.{end}"]
        both = c.TimeRange(start_time={"seconds": 0}, end_time={"seconds": 60})
        getattr(both, end).CopyFrom(getattr(window, end))
        found = await refused(
            figures.GetTenantAnalytics(
                analytics.GetTenantAnalyticsRequest(time_range=both), metadata=admin
            )
        )
        assert found == [f"time_range.{end}"]
    # A valid range at the very end of year 9999: answered (no minutes), not an overflow.
    last_day = c.TimeRange(
        start_time={"seconds": LAST_SECOND - 3600}, end_time={"seconds": LAST_SECOND}
    )
    answer = await figures.GetTenantAnalytics(
        analytics.GetTenantAnalyticsRequest(time_range=last_day), metadata=admin
    )
    assert list(answer.minutes) == []


async def test_an_event_with_an_out_of_range_time_is_rejected_alone(
    channel: grpc.aio.Channel,
) -> None:
    bridge = Bridge(channel, "acme")
    typing = ingest.InboundEvent(
        platform_event_id="typing-bad-time",
        channel=c.CHANNEL_TYPE_WHATSAPP,
        platform_user_id="15550009999",
        event_time={"seconds": LAST_SECOND + 1},
        typing=ingest.TypingReport(typing=True),
    )
    status = ingest.InboundEvent(
        platform_event_id="status-bad-watermark",
        channel=c.CHANNEL_TYPE_MESSENGER,
        platform_user_id="15550009999",
        status=ingest.StatusReport(
            status=c.DELIVERY_STATUS_READ, watermark_time={"seconds": 1, "nanos": -5}
        ),
    )
    fine = ingest.InboundEvent(
        platform_event_id="typing-fine",
        channel=c.CHANNEL_TYPE_WHATSAPP,
        platform_user_id="15550009999",
        typing=ingest.TypingReport(typing=True),
    )
    results = await bridge.ingest(typing, status, fine)
    assert [(r.outcome, r.error_reason) for r in results] == [
        (ingest.INGEST_OUTCOME_REJECTED, "INVALID_EVENT"),
        (ingest.INGEST_OUTCOME_REJECTED, "INVALID_EVENT"),
        (ingest.INGEST_OUTCOME_IGNORED, ""),  # no conversation: judged on its own
    ]
    assert "event_time" in results[0].error_message
    assert "watermark_time" in results[1].error_message
