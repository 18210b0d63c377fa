"""TenantService: the caller's tenant, never a secret; UpsertTenant stores tenants in MongoDB
that every server process and the bridge follow."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from google.rpc import error_details_pb2
from pymongo import AsyncMongoClient

from chat.v1 import (
    chat_service_pb2,
    chat_service_pb2_grpc,
    tenant_service_pb2,
    tenant_service_pb2_grpc,
)
from devstack.processes import free_port
from devstack.stack import Endpoints
from devstack.tokens import mint_dev_token
from server.api.tenants import tenant_from_proto
from server.domain.clock import utc_now
from server.domain.errors import PermissionDenied
from server.repositories.idempotency import MongoIdempotencyStore
from server.repositories.mongo import Transactions
from server.repositories.secrets import SecretBox
from server.repositories.tenants import MongoTenantStore
from server.repositories.tenants_file import load_tenants
from server.services.idempotency import IdempotentRequests
from server.services.tenants import TenantAdmin
from server.tenancy.directory import TenantDirectory
from tests.support.error_details import details_of
from tests.support.paths import EXAMPLE_TENANTS
from tests.support.servers import RunningServer
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import eventually
from webhook_bridge.app import create_app
from webhook_bridge.tokens import ServiceTokens, SigningKey

StartServer = Callable[..., Awaitable[RunningServer]]
SECRET = "tenant-api-test-secret-long-enough-for-hs256"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "platforms"


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


def new_tenant_id() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def new_number() -> str:
    return str(random.randrange(10**14, 10**15))  # noqa: S311 - an id, not a secret


def write_key(directory: Path) -> str:
    path = directory / "tenant-secrets.key"
    path.write_text(base64.b64encode(os.urandom(32)).decode())
    return str(path)


@pytest.fixture(scope="session")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One key for the session, as a deployment has (tenants outlive each test)."""
    return write_key(tmp_path_factory.mktemp("tenant-key"))


@pytest.fixture
async def stored_server(start_server: StartServer, key_file: str) -> RunningServer:
    return await start_server(
        CHAT_JWT_SECRET=SECRET,
        CHAT_JWT_ISSUER="chat-service-dev",
        CHAT_JWT_AUDIENCE="chat-service",
        CHAT_TENANT_SECRETS_KEY_FILE=key_file,
    )


@pytest.fixture
async def mongo(stack: Endpoints) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.mongodb_uri, tz_aware=True)
    yield client
    await client.close()


def whatsapp_tenant(phone_number_id: str, **changes: Any) -> tenant_service_pb2.Tenant:
    tenant = tenant_service_pb2.Tenant(
        enabled=True,
        display_name="Stored Co",
        quotas=tenant_service_pb2.Quotas(requests_per_second=5, burst=10),
    )
    tenant.channels.whatsapp.CopyFrom(
        tenant_service_pb2.WhatsAppConfig(
            phone_number_id=phone_number_id,
            verify_token="stored-verify-token",
            app_secret="stored-app-secret",
            access_token="stored-access-token",
        )
    )
    tenant.channels.slack.CopyFrom(
        tenant_service_pb2.SlackConfig(signing_secret="stored-signing", bot_token="xoxb-stored")
    )
    for name, value in changes.items():
        setattr(tenant, name, value)
    return tenant


async def upsert(
    target: str, tenant_id: str, tenant: tenant_service_pb2.Tenant, scopes: tuple[str, ...] = ()
) -> tenant_service_pb2.Tenant:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = tenant_service_pb2_grpc.TenantServiceStub(channel)
        reply = await stub.UpsertTenant(
            tenant_service_pb2.UpsertTenantRequest(tenant=tenant),
            metadata=auth(tenant_id, scopes or ("chat:admin",)),
            timeout=5,
        )
    return reply.tenant


async def upsert_error(
    target: str, tenant_id: str, tenant: tenant_service_pb2.Tenant
) -> tuple[grpc.StatusCode, str, list[str]]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await upsert(target, tenant_id, tenant)
    details = details_of(caught.value)
    reasons = [d.reason for d in details if isinstance(d, error_details_pb2.ErrorInfo)]
    fields = [
        v.field
        for d in details
        if isinstance(d, error_details_pb2.BadRequest)
        for v in d.field_violations
    ]
    return caught.value.code(), reasons[0], fields


async def list_conversations(target: str, tenant_id: str) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = chat_service_pb2_grpc.ChatServiceStub(channel)
        try:
            await stub.ListConversations(
                chat_service_pb2.ListConversationsRequest(),
                metadata=auth(tenant_id, ("chat:read",)),
                timeout=5,
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def test_upsert_creates_a_tenant_that_can_call_at_once(
    stored_server: RunningServer, mongo: AsyncMongoClient[dict[str, Any]]
) -> None:
    tenant_id = new_tenant_id()
    target = stored_server.target
    assert await list_conversations(target, tenant_id) == grpc.StatusCode.PERMISSION_DENIED
    number = new_number()
    created = await upsert(target, tenant_id, whatsapp_tenant(number))
    assert created.id == tenant_id
    assert created.enabled
    assert created.display_name == "Stored Co"
    assert created.channels.whatsapp.phone_number_id == number
    assert created.channels.whatsapp.app_secret_set
    assert created.channels.whatsapp.access_token_set
    assert created.channels.slack.bot_token_set
    assert not created.channels.HasField("teams")
    assert created.HasField("update_time")
    assert b"stored-app-secret" not in created.SerializeToString()
    assert await list_conversations(target, tenant_id) == grpc.StatusCode.OK
    async with grpc.aio.insecure_channel(target) as channel:
        got = await tenant_service_pb2_grpc.TenantServiceStub(channel).GetTenant(
            tenant_service_pb2.GetTenantRequest(), metadata=auth(tenant_id), timeout=5
        )
    assert got.tenant == created
    # At rest, secrets are sealed: the document holds none of them in the clear.
    document = await mongo["chat"]["tenants"].find_one({"_id": tenant_id})
    assert document is not None
    raw = repr(document)
    for secret in ("stored-verify-token", "stored-app-secret", "stored-access-token", "xoxb-"):
        assert secret not in raw
    assert document["channels"]["whatsapp"]["phone_number_id"] == number


async def test_empty_secrets_keep_their_stored_values_and_unset_channels_go(
    stored_server: RunningServer, key_file: str, mongo: AsyncMongoClient[dict[str, Any]]
) -> None:
    tenant_id, number = new_tenant_id(), new_number()
    await upsert(stored_server.target, tenant_id, whatsapp_tenant(number))
    change = whatsapp_tenant(number, display_name="Renamed")
    change.channels.whatsapp.app_secret = ""
    change.channels.whatsapp.access_token = "rotated-access-token"
    change.channels.ClearField("slack")
    updated = await upsert(stored_server.target, tenant_id, change)
    assert updated.display_name == "Renamed"
    assert updated.channels.whatsapp.app_secret_set
    assert not updated.channels.HasField("slack")
    store = MongoTenantStore(database=mongo["chat"], secrets=SecretBox.from_file(Path(key_file)))
    stored = await store.get(tenant_id)
    assert stored is not None
    assert stored.revision == 2
    whatsapp = stored.tenant.channels.whatsapp
    assert whatsapp is not None
    assert whatsapp.app_secret == "stored-app-secret"
    assert whatsapp.access_token == "rotated-access-token"
    assert stored.tenant.channels.slack is None


async def test_other_server_processes_follow_changes(
    start_server: StartServer, stored_server: RunningServer, key_file: str
) -> None:
    other = await start_server(
        CHAT_JWT_SECRET=SECRET,
        CHAT_JWT_ISSUER="chat-service-dev",
        CHAT_JWT_AUDIENCE="chat-service",
        CHAT_TENANT_SECRETS_KEY_FILE=key_file,
    )
    tenant_id, number = new_tenant_id(), new_number()
    await upsert(stored_server.target, tenant_id, whatsapp_tenant(number))

    async def served_by_other() -> bool:
        return await list_conversations(other.target, tenant_id) == grpc.StatusCode.OK

    await eventually(served_by_other, "the other server to serve the new tenant")
    # Disabled on one server: refused by the other too, admin calls included.
    await upsert(stored_server.target, tenant_id, whatsapp_tenant(number, enabled=False))

    async def refused_by_other() -> bool:
        return (
            await list_conversations(other.target, tenant_id) == grpc.StatusCode.PERMISSION_DENIED
        )

    await eventually(refused_by_other, "the other server to refuse the disabled tenant")
    code, reason, _ = await upsert_error(other.target, tenant_id, whatsapp_tenant(number))
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "TENANT_DISABLED")


async def test_a_stored_tenants_quota_is_enforced(stored_server: RunningServer) -> None:
    tenant_id = new_tenant_id()
    tenant = whatsapp_tenant(new_number())
    tenant.quotas.CopyFrom(tenant_service_pb2.Quotas(requests_per_second=0.01, burst=1))
    # The upsert itself is the tenant's first request; the next ones exceed a burst of 1.
    await upsert(stored_server.target, tenant_id, tenant)
    codes = [await list_conversations(stored_server.target, tenant_id) for _ in range(3)]
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes


async def test_invalid_configurations_are_refused_field_by_field(
    stored_server: RunningServer,
) -> None:
    tenant_id = new_tenant_id()
    bad = whatsapp_tenant("not-digits", display_name="x" * 201)
    bad.quotas.requests_per_second = float("nan")
    bad.quotas.burst = -1
    bad.channels.slack.bot_token = "has spaces in it"
    bad.channels.teams.app_password = "p"
    code, reason, fields = await upsert_error(stored_server.target, tenant_id, bad)
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert sorted(fields) == [
        "tenant.channels.slack.bot_token",
        "tenant.channels.teams.app_id",
        "tenant.channels.whatsapp.phone_number_id",
        "tenant.display_name",
        "tenant.quotas.burst",
        "tenant.quotas.requests_per_second",
    ]
    code, _, fields = await upsert_error(
        stored_server.target, tenant_id, whatsapp_tenant(new_number(), enabled=False)
    )
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["tenant.enabled"])
    assert await list_conversations(stored_server.target, tenant_id) == (
        grpc.StatusCode.PERMISSION_DENIED
    )


async def test_file_tenants_and_taken_numbers_are_refused(stored_server: RunningServer) -> None:
    code, reason, _ = await upsert_error(
        stored_server.target, "acme", whatsapp_tenant(new_number())
    )
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "TENANT_MANAGED_BY_FILE")
    acme_number = "100000000000001"  # the example tenants file's
    code, reason, _ = await upsert_error(
        stored_server.target, new_tenant_id(), whatsapp_tenant(acme_number)
    )
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "PHONE_NUMBER_ID_TAKEN")
    code, reason, _ = await upsert_error(
        stored_server.target, "Not A Valid Id", whatsapp_tenant(new_number())
    )
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "TENANT_ID_INVALID")


async def test_upsert_needs_the_admin_scope(stored_server: RunningServer) -> None:
    tenant_id = new_tenant_id()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await upsert(
            stored_server.target, tenant_id, whatsapp_tenant(new_number()), ("chat:write",)
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await list_conversations(stored_server.target, tenant_id) == (
        grpc.StatusCode.PERMISSION_DENIED
    )


async def test_a_server_with_another_key_does_not_serve_the_tenant(
    start_server: StartServer, stored_server: RunningServer, tmp_path: Path
) -> None:
    tenant_id = new_tenant_id()
    await upsert(stored_server.target, tenant_id, whatsapp_tenant(new_number()))
    other = await start_server(
        CHAT_JWT_SECRET=SECRET,
        CHAT_JWT_ISSUER="chat-service-dev",
        CHAT_JWT_AUDIENCE="chat-service",
        CHAT_TENANT_SECRETS_KEY_FILE=write_key(tmp_path),
    )
    # Its credentials do not open there: refused, rather than served with broken secrets.
    assert await list_conversations(other.target, tenant_id) == grpc.StatusCode.PERMISSION_DENIED
    assert await list_conversations(stored_server.target, tenant_id) == grpc.StatusCode.OK


async def test_without_a_secrets_key_nothing_is_stored(server: RunningServer) -> None:
    code, reason, _ = await upsert_error(
        server.target, new_tenant_id(), whatsapp_tenant(new_number())
    )
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "TENANT_STORE_DISABLED")


async def test_the_bridge_verifies_webhooks_with_stored_secrets(
    stored_server: RunningServer, key_file: str, stack: Endpoints
) -> None:
    tenant_id, number = new_tenant_id(), new_number()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.mongodb_uri, tz_aware=True)
    directory = TenantDirectory(
        file_tenants={},
        store=MongoTenantStore(
            database=client["chat"], secrets=SecretBox.from_file(Path(key_file))
        ),
    )
    await directory.start()
    await asyncio.wait_for(directory.wait_loaded(), 10)
    app = create_app(
        server_target=stored_server.target,
        tenants=directory,
        tokens=ServiceTokens(
            key=SigningKey(algorithm="HS256", key=SECRET),
            issuer="chat-service-dev",
            audience="chat-service",
        ),
        teams_metadata_url="http://127.0.0.1:9/unused",
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/webhooks/whatsapp/{tenant_id}"
    payload = json.loads((FIXTURES / "whatsapp" / "webhook_text_message.json").read_text())
    payload["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] = number
    body = json.dumps(payload).encode()

    async def post(secret: str) -> int:
        signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        async with http.post(
            url,
            data=body,
            headers={"Content-Type": "application/json", "X-Hub-Signature-256": signature},
        ) as response:
            return response.status

    try:
        async with aiohttp.ClientSession() as http:
            assert await post("stored-app-secret") == 404  # not created yet
            await upsert(stored_server.target, tenant_id, whatsapp_tenant(number))

            async def accepted() -> bool:
                return await post("stored-app-secret") == 200

            await eventually(accepted, "the bridge to know the stored tenant")
            assert await post("some-other-secret") == 403
    finally:
        await runner.cleanup()
        await directory.close()
        await client.close()


async def test_the_directory_catches_up_after_losing_mongodb(
    stored_server: RunningServer, key_file: str, stack: Endpoints
) -> None:
    mongo_port = int(stack.mongodb_uri.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    proxy = TcpProxy(listen_port=free_port(), target_port=mongo_port)
    await proxy.start()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        f"mongodb://127.0.0.1:{proxy.listen_port}/?directConnection=true",
        tz_aware=True,
        serverSelectionTimeoutMS=1000,
    )
    directory = TenantDirectory(
        file_tenants={},
        store=MongoTenantStore(
            database=client["chat"], secrets=SecretBox.from_file(Path(key_file))
        ),
        poll_seconds=0.2,
    )
    tenant_id, number = new_tenant_id(), new_number()
    try:
        await directory.start()
        await asyncio.wait_for(directory.wait_loaded(), 10)
        await upsert(stored_server.target, tenant_id, whatsapp_tenant(number))

        async def known() -> bool:
            return directory.get(tenant_id) is not None

        await eventually(known, "the tenant to be known")
        await proxy.stop()
        # Changed while this process cannot see MongoDB: it keeps the last known state...
        await upsert(stored_server.target, tenant_id, whatsapp_tenant(number, enabled=False))
        # Longer than server selection (1 s): its reads fail, not merely wait.
        await asyncio.sleep(2.5)
        tenant = directory.get(tenant_id)
        assert tenant is not None
        assert tenant.enabled
        # ...and reloads when MongoDB is back, so the change is not missed.
        await proxy.start()

        async def disabled() -> bool:
            current = directory.get(tenant_id)
            return current is not None and not current.enabled

        await eventually(disabled, "the directory to catch up", within=30)
    finally:
        await directory.close()
        await proxy.stop()
        await client.close()


async def test_the_request_cannot_name_another_tenant(stored_server: RunningServer) -> None:
    attacker, victim = new_tenant_id(), new_tenant_id()
    await upsert(stored_server.target, victim, whatsapp_tenant(new_number()))
    await upsert(stored_server.target, attacker, whatsapp_tenant(new_number()))
    aimed = whatsapp_tenant(new_number(), id=victim, display_name="taken over")
    changed = await upsert(stored_server.target, attacker, aimed)
    assert (changed.id, changed.display_name) == (attacker, "taken over")
    async with grpc.aio.insecure_channel(stored_server.target) as channel:
        got = await tenant_service_pb2_grpc.TenantServiceStub(channel).GetTenant(
            tenant_service_pb2.GetTenantRequest(), metadata=auth(victim), timeout=5
        )
    assert got.tenant.display_name == "Stored Co"


async def test_concurrent_upserts_lose_no_secret(
    stored_server: RunningServer, key_file: str, mongo: AsyncMongoClient[dict[str, Any]]
) -> None:
    tenant_id, number = new_tenant_id(), new_number()
    base = whatsapp_tenant(number)
    base.channels.whatsapp.app_secret = "first-app-secret"
    base.channels.whatsapp.access_token = "first-access-token"
    await upsert(stored_server.target, tenant_id, base)
    # Each rotates one secret and leaves the other empty (kept): neither rotation may be lost.
    rotate_secret = whatsapp_tenant(number)
    rotate_secret.channels.whatsapp.app_secret = "second-app-secret"
    rotate_secret.channels.whatsapp.access_token = ""
    rotate_token = whatsapp_tenant(number)
    rotate_token.channels.whatsapp.app_secret = ""
    rotate_token.channels.whatsapp.access_token = "second-access-token"
    for _ in range(3):
        await asyncio.gather(
            upsert(stored_server.target, tenant_id, rotate_secret),
            upsert(stored_server.target, tenant_id, rotate_token),
        )
    store = MongoTenantStore(database=mongo["chat"], secrets=SecretBox.from_file(Path(key_file)))
    stored = await store.get(tenant_id)
    assert stored is not None
    assert stored.revision == 7
    whatsapp = stored.tenant.channels.whatsapp
    assert whatsapp is not None
    assert (whatsapp.app_secret, whatsapp.access_token) == (
        "second-app-secret",
        "second-access-token",
    )


async def test_two_tenants_racing_for_one_number_get_one_each(
    stored_server: RunningServer,
) -> None:
    number = new_number()
    results = await asyncio.gather(
        *(upsert(stored_server.target, new_tenant_id(), whatsapp_tenant(number)) for _ in range(4)),
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, tenant_service_pb2.Tenant)]
    lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(won) == 1
    assert len(lost) == 3
    assert {e.code() for e in lost} == {grpc.StatusCode.ALREADY_EXISTS}


async def test_a_replayed_request_id_returns_the_first_answer_and_refuses_another_request(
    stored_server: RunningServer,
) -> None:
    tenant_id, number = new_tenant_id(), new_number()

    async def call(name: str) -> tenant_service_pb2.Tenant:
        async with grpc.aio.insecure_channel(stored_server.target) as channel:
            reply = await tenant_service_pb2_grpc.TenantServiceStub(channel).UpsertTenant(
                tenant_service_pb2.UpsertTenantRequest(
                    tenant=whatsapp_tenant(number, display_name=name), request_id="req-1"
                ),
                metadata=auth(tenant_id),
                timeout=5,
            )
        return reply.tenant

    first = await call("first")
    assert await call("first") == first
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call("second")
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    [info] = [d for d in details_of(refused.value) if isinstance(d, error_details_pb2.ErrorInfo)]
    assert info.reason == "IDEMPOTENCY_KEY_REUSED"
    async with grpc.aio.insecure_channel(stored_server.target) as channel:
        got = await tenant_service_pb2_grpc.TenantServiceStub(channel).GetTenant(
            tenant_service_pb2.GetTenantRequest(), metadata=auth(tenant_id), timeout=5
        )
    assert got.tenant.display_name == "first"


async def test_a_malformed_stored_document_stops_nothing_else(
    start_server: StartServer,
    stored_server: RunningServer,
    key_file: str,
    mongo: AsyncMongoClient[dict[str, Any]],
) -> None:
    bad_id, good_id = new_tenant_id(), new_tenant_id()
    await mongo["chat"]["tenants"].insert_one(
        {"_id": bad_id, "enabled": "yes", "channels": ["not", "a", "document"]}
    )
    await upsert(stored_server.target, good_id, whatsapp_tenant(new_number()))
    # A process starting now loads every other tenant, and refuses the unreadable one.
    fresh = await start_server(
        CHAT_JWT_SECRET=SECRET,
        CHAT_JWT_ISSUER="chat-service-dev",
        CHAT_JWT_AUDIENCE="chat-service",
        CHAT_TENANT_SECRETS_KEY_FILE=key_file,
    )
    assert await list_conversations(fresh.target, good_id) == grpc.StatusCode.OK
    assert await list_conversations(fresh.target, bad_id) == grpc.StatusCode.PERMISSION_DENIED
    # And it keeps following changes.
    later = new_tenant_id()
    await upsert(stored_server.target, later, whatsapp_tenant(new_number()))

    async def known() -> bool:
        return await list_conversations(fresh.target, later) == grpc.StatusCode.OK

    await eventually(known, "the tenant to be known")
    code, reason, _ = await upsert_error(fresh.target, bad_id, whatsapp_tenant(new_number()))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "TENANT_UNREADABLE")


async def test_a_lagging_process_cannot_enable_a_disabled_tenant(
    stored_server: RunningServer, key_file: str, mongo: AsyncMongoClient[dict[str, Any]]
) -> None:
    tenant_id, number = new_tenant_id(), new_number()
    await upsert(stored_server.target, tenant_id, whatsapp_tenant(number))
    await upsert(stored_server.target, tenant_id, whatsapp_tenant(number, enabled=False))
    # A process whose directory has not seen the tenant treats the call as a creation.
    admin = TenantAdmin(
        store=MongoTenantStore(database=mongo["chat"], secrets=SecretBox.from_file(Path(key_file))),
        directory=TenantDirectory(file_tenants={}, store=None),
        transactions=Transactions(client=mongo),
        requests=IdempotentRequests(store=MongoIdempotencyStore(database=mongo["chat"])),
        clock=utc_now,
    )
    with pytest.raises(PermissionDenied):
        await admin.upsert(tenant_from_proto(tenant_id, whatsapp_tenant(number)))


async def test_the_web_channel_is_stored_with_its_identity_secret_sealed(
    stored_server: RunningServer, key_file: str, mongo: AsyncMongoClient[dict[str, Any]]
) -> None:
    tenant_id = new_tenant_id()
    tenant = tenant_service_pb2.Tenant(enabled=True)
    tenant.channels.web.CopyFrom(
        tenant_service_pb2.WebConfig(
            site_key="site-key-1234",
            allowed_origins=["https://shop.example", "http://localhost:3000"],
            identity_secret="web-identity-secret",
            visitor_messages_per_minute=12,
        )
    )
    created = await upsert(stored_server.target, tenant_id, tenant)
    web = created.channels.web
    assert web.site_key == "site-key-1234"
    assert list(web.allowed_origins) == ["https://shop.example", "http://localhost:3000"]
    assert web.identity_secret_set
    assert not web.identity_secret
    assert web.visitor_messages_per_minute == 12
    document = await mongo["chat"]["tenants"].find_one({"_id": tenant_id})
    assert document is not None
    assert "web-identity-secret" not in repr(document)
    # An empty secret keeps the stored one.
    tenant.channels.web.identity_secret = ""
    await upsert(stored_server.target, tenant_id, tenant)
    store = MongoTenantStore(database=mongo["chat"], secrets=SecretBox.from_file(Path(key_file)))
    stored = await store.get(tenant_id)
    assert stored is not None
    assert stored.tenant.channels.web is not None
    assert stored.tenant.channels.web.identity_secret == "web-identity-secret"
    assert stored.tenant.channels.web.allowed_origins == (
        "https://shop.example",
        "http://localhost:3000",
    )
    # Origins are exact: no path, no wildcard; a site key is required.
    bad = tenant_service_pb2.Tenant(enabled=True)
    bad.channels.web.CopyFrom(
        tenant_service_pb2.WebConfig(allowed_origins=["https://shop.example/page", "*"])
    )
    code, _, fields = await upsert_error(stored_server.target, new_tenant_id(), bad)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(fields) == {"tenant.channels.web.site_key", "tenant.channels.web.allowed_origins"}
