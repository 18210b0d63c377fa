"""TenantService.GetTenant: the caller's tenant, and never a secret."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
import pytest

from chat.v1 import tenant_service_pb2, tenant_service_pb2_grpc
from devstack.tokens import mint_dev_token
from server.repositories.tenants_file import load_tenants
from tests.conftest import EXAMPLE_TENANTS
from tests.integration.conftest import RunningServer

StartServer = Callable[..., Awaitable[RunningServer]]
SECRET = "tenant-api-test-secret-long-enough-for-hs256"


@pytest.fixture
async def server(start_server: StartServer) -> RunningServer:
    return await start_server(
        CHAT_JWT_SECRET=SECRET, CHAT_JWT_ISSUER="chat-service-dev", CHAT_JWT_AUDIENCE="chat-service"
    )


def auth(tenant: str, scopes: tuple[str, ...] = ("chat:admin",)) -> tuple[tuple[str, str], ...]:
    token = mint_dev_token(secret=SECRET, tenant_id=tenant, scopes=scopes)
    return (("authorization", f"Bearer {token}"),)


async def test_get_tenant_returns_the_callers_tenant_without_secrets(
    server: RunningServer,
) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = tenant_service_pb2_grpc.TenantServiceStub(channel)
        reply = await stub.GetTenant(
            tenant_service_pb2.GetTenantRequest(), metadata=auth("acme"), timeout=5
        )
    tenant = reply.tenant
    assert tenant.id == "acme"
    assert tenant.enabled
    assert (tenant.quotas.requests_per_second, tenant.quotas.burst) == (50, 100)
    assert tenant.channels.whatsapp.phone_number_id == "100000000000001"
    assert tenant.channels.whatsapp.app_secret_set
    assert tenant.channels.slack.signing_secret_set
    assert tenant.channels.slack.bot_token_set
    assert tenant.channels.teams.app_password_set
    wire = reply.SerializeToString()
    acme = load_tenants(EXAMPLE_TENANTS)["acme"]
    assert acme.channels.slack is not None
    assert acme.channels.whatsapp is not None
    for secret in (
        acme.channels.slack.signing_secret,
        acme.channels.slack.bot_token,
        acme.channels.whatsapp.app_secret,
        acme.channels.whatsapp.access_token,
        acme.channels.whatsapp.verify_token,
    ):
        assert secret.encode() not in wire


async def test_a_tenant_sees_only_itself(server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = tenant_service_pb2_grpc.TenantServiceStub(channel)
        reply = await stub.GetTenant(
            tenant_service_pb2.GetTenantRequest(), metadata=auth("globex"), timeout=5
        )
    assert reply.tenant.id == "globex"
    assert not reply.tenant.channels.HasField("whatsapp")
    assert b"acme" not in reply.SerializeToString()


async def test_get_tenant_needs_the_admin_scope(server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = tenant_service_pb2_grpc.TenantServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetTenant(
                tenant_service_pb2.GetTenantRequest(),
                metadata=auth("acme", ("chat:read", "chat:write")),
                timeout=5,
            )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_upsert_tenant_says_it_is_not_available_yet(server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = tenant_service_pb2_grpc.TenantServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.UpsertTenant(
                tenant_service_pb2.UpsertTenantRequest(), metadata=auth("acme"), timeout=5
            )
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "CHAT_TENANTS_FILE" in (caught.value.details() or "")
