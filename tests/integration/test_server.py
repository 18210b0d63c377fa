"""The chat server as a client sees it: health per dependency, reflection, request ids."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import grpc
import pytest
import structlog
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from structlog.testing import capture_logs

from chat.v1 import delivery_service_pb2
from server.api.served import SERVED_SERVICES
from server.clients import open_clients
from server.grpc_server import ChatServer
from server.settings import Settings

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def health(channel: grpc.aio.Channel, service: str = "") -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    return int(reply.status)


async def listed_services(channel: grpc.aio.Channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    async for reply in stub.ServerReflectionInfo(iter([request]), timeout=5):
        return {service.name for service in reply.list_services_response.service}
    raise AssertionError("no reflection reply")


async def test_health_reports_the_service_and_each_dependency(channel: grpc.aio.Channel) -> None:
    for name in ("", *SERVED_SERVICES, "mongodb", "redis", "kafka"):
        assert await health(channel, name) == SERVING, name


async def test_an_unknown_health_service_is_not_found(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await health(channel, "chat.v1.NoSuchService")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_every_service(channel: grpc.aio.Channel) -> None:
    assert await listed_services(channel) == {
        "chat.v1.ChatService",
        "chat.v1.SessionService",
        "chat.v1.IngestService",
        "chat.v1.DeliveryService",
        "chat.v1.TenantService",
        "chat.v1.AnalyticsService",
        "chat.v1.AuditService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


async def test_reflection_serves_the_contract(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="chat.v1.ChatService")
    names: set[str] = set()
    async for reply in stub.ServerReflectionInfo(iter([request]), timeout=5):
        for raw in reply.file_descriptor_response.file_descriptor_proto:
            names.add(descriptor_pb2.FileDescriptorProto.FromString(raw).name)
        break
    assert "chat/v1/chat_service.proto" in names


async def test_an_unknown_rpc_is_unimplemented(channel: grpc.aio.Channel) -> None:
    # A method the contract does not have (an old or newer client): said plainly.
    call = channel.unary_unary(
        "/chat.v1.DeliveryService/NoSuchMethod",
        request_serializer=delivery_service_pb2.GetDeliveryStatusRequest.SerializeToString,
        response_deserializer=delivery_service_pb2.GetDeliveryStatusResponse.FromString,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(delivery_service_pb2.GetDeliveryStatusRequest(message_id="m1"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_request_id_is_returned_and_bound_to_the_log(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    # merge_contextvars, as in production: that is how request ids reach every line.
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        call = stub.Check(
            health_pb2.HealthCheckRequest(), metadata=(("x-request-id", "req-123"),), timeout=5
        )
        await call
    assert ("x-request-id", "req-123") in tuple(await call.initial_metadata())
    access = [line for line in logs if line["event"] == "rpc finished"]
    assert len(access) == 1
    assert access[0]["request_id"] == "req-123"
    assert access[0]["method"] == "/grpc.health.v1.Health/Check"
    assert access[0]["code"] == "OK"


async def test_a_failed_call_is_logged_with_its_code(channel: grpc.aio.Channel) -> None:
    with capture_logs() as logs:
        with pytest.raises(grpc.aio.AioRpcError):
            await health(channel, "chat.v1.NoSuchService")
        # An aborted call's status reaches the client before the server's interceptor has
        # unwound and logged it: give the server a moment.
        for _ in range(50):
            access = [line for line in logs if line["event"] == "rpc finished"]
            if access:
                break
            await asyncio.sleep(0.02)
    assert [line["code"] for line in access] == ["NOT_FOUND"]


@pytest.mark.parametrize("bad", ["bad id with ${injection}", "x" * 129, "a/../../etc"])
async def test_a_malformed_request_id_is_replaced(channel: grpc.aio.Channel, bad: str) -> None:
    call = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), metadata=(("x-request-id", bad),), timeout=5
    )
    await call
    returned = dict(tuple(await call.initial_metadata()))["x-request-id"]
    assert isinstance(returned, str)
    assert re.fullmatch(r"[0-9a-f]{32}", returned)


async def test_with_kafka_down_the_service_still_serves(
    make_settings: Callable[..., Settings],
) -> None:
    # Nothing listens on port 1: the broker is unreachable.
    settings = make_settings(CHAT_KAFKA_BOOTSTRAP="127.0.0.1:1")
    server = ChatServer(settings=settings, clients=await open_clients(settings))
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert await health(channel, "kafka") == NOT_SERVING
            assert await health(channel, "") == SERVING
    finally:
        await server.stop()


async def test_with_mongodb_down_the_service_is_not_serving(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        CHAT_MONGODB_URI="mongodb://127.0.0.1:1/?directConnection=true&serverSelectionTimeoutMS=300"
    )
    server = ChatServer(settings=settings, clients=await open_clients(settings))
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert await health(channel, "mongodb") == NOT_SERVING
            assert await health(channel, "redis") == SERVING
            assert await health(channel, "") == NOT_SERVING
            assert await health(channel, "chat.v1.ChatService") == NOT_SERVING
    finally:
        await server.stop()


async def test_shutdown_tells_watchers_not_serving_before_closing(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    server = ChatServer(settings=settings, clients=await open_clients(settings))
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        first = await watch.read()
        assert first.status == SERVING
        stopping = asyncio.create_task(server.stop())
        second = await asyncio.wait_for(watch.read(), 5)
        assert second.status == NOT_SERVING
        await asyncio.wait_for(stopping, 10)
