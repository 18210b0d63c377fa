"""Authentication and authorization through a real server and client."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from server.auth.scopes import PUBLIC_METHODS, REQUIRED_SCOPES
from tests.support.contract import served_methods
from tests.support.keys import AUDIENCE, ISSUER, JwksServer, KeyPair, standard_claims
from tests.support.probe import ECHO, UNLISTED, WRITE, unary_call
from tests.support.servers import RunningServer, tenants_file

StartServer = Callable[..., Awaitable[RunningServer]]
RSA = KeyPair.rsa("rsa-1")
EC = KeyPair.ec("ec-1")
HS_SECRET = "development-secret-of-enough-length-for-hs256"


def error_info(exc: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(exc)
    assert status is not None, "no rich status details"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError("no ErrorInfo")


@pytest.fixture(scope="module")
async def jwks() -> AsyncIterator[JwksServer]:
    server = JwksServer(keys=[RSA, EC])
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def rs_server(start_server: StartServer, jwks: JwksServer, tmp_path: Path) -> RunningServer:
    return await start_server(
        CHAT_JWT_JWKS_URL=jwks.url,
        CHAT_JWT_ALGORITHMS="RS256,ES256",
        CHAT_JWT_ISSUER=ISSUER,
        CHAT_JWT_AUDIENCE=AUDIENCE,
        CHAT_JWT_LEEWAY_SECONDS="5",
        CHAT_TENANTS_FILE=tenants_file(
            tmp_path,
            "tenants:\n  - id: acme\n  - id: umbrella\n  - id: frozen\n    enabled: false\n",
        ),
    )


async def call(server: RunningServer, token: str | None, method: str = ECHO) -> str:
    metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
    async with grpc.aio.insecure_channel(server.target) as channel:
        reply = await unary_call(channel, method)(_string(""), metadata=metadata, timeout=5)
    return str(reply.value)


async def rejected(
    server: RunningServer, token: str | None, method: str = ECHO, raw_header: str | None = None
) -> tuple[grpc.StatusCode, str, str]:
    metadata: tuple[tuple[str, str], ...] = ()
    if raw_header is not None:
        metadata = (("authorization", raw_header),)
    elif token is not None:
        metadata = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(server.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await unary_call(channel, method)(_string(""), metadata=metadata, timeout=5)
    exc = caught.value
    details = exc.details() or ""
    assert "Traceback" not in details
    return exc.code(), error_info(exc).reason, details


def _string(value: str) -> Any:
    from google.protobuf import wrappers_pb2  # noqa: PLC0415

    return wrappers_pb2.StringValue(value=value)


async def test_a_valid_token_reaches_the_method_with_its_tenant(rs_server: RunningServer) -> None:
    assert await call(rs_server, RSA.sign()) == "acme/user-1"
    assert await call(rs_server, EC.sign(sub="svc-2", tenant_id="umbrella")) == "umbrella/svc-2"


async def test_scope_may_be_a_list(rs_server: RunningServer) -> None:
    assert await call(rs_server, RSA.sign(scope=["chat:read"])) == "acme/user-1"


def _none_token() -> str:
    return jwt.encode(standard_claims(), None, algorithm="none")  # type: ignore[arg-type]


def _forged_hs256_with_public_key() -> str:
    # The classic confusion attack: HMAC keyed with the server's RSA public key.
    import base64  # noqa: PLC0415
    import hashlib  # noqa: PLC0415
    import hmac  # noqa: PLC0415
    import json  # noqa: PLC0415

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": RSA.kid}).encode())
    payload = b64(json.dumps(standard_claims()).encode())
    signature = hmac.new(RSA.public_pem(), f"{header}.{payload}".encode(), hashlib.sha256)
    return f"{header}.{payload}.{b64(signature.digest())}"


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        pytest.param(lambda: "abc.def", "TOKEN_MALFORMED", id="malformed"),
        pytest.param(lambda: "a.b.c", "TOKEN_MALFORMED", id="garbage-segments"),
        pytest.param(_none_token, "TOKEN_ALGORITHM_NOT_ALLOWED", id="alg-none"),
        pytest.param(
            _forged_hs256_with_public_key, "TOKEN_ALGORITHM_NOT_ALLOWED", id="hs256-with-public-key"
        ),
        pytest.param(
            lambda: KeyPair("rsa-1", "RS256", KeyPair.rsa("x").private).sign(),
            "TOKEN_SIGNATURE_INVALID",
            id="wrong-signature",
        ),
        pytest.param(lambda: RSA.sign(exp=int(time.time()) - 60), "TOKEN_EXPIRED", id="expired"),
        pytest.param(
            lambda: RSA.sign(nbf=int(time.time()) + 120), "TOKEN_NOT_YET_VALID", id="not-yet-valid"
        ),
        pytest.param(lambda: RSA.sign(aud="someone-else"), "TOKEN_AUDIENCE_INVALID", id="aud"),
        pytest.param(lambda: RSA.sign(iss="https://evil.test"), "TOKEN_ISSUER_INVALID", id="iss"),
        pytest.param(lambda: RSA.sign(tenant_id=None), "TOKEN_CLAIM_MISSING", id="no-tenant"),
        pytest.param(lambda: RSA.sign(exp=None), "TOKEN_CLAIM_MISSING", id="no-exp"),
        pytest.param(lambda: RSA.sign(aud=None), "TOKEN_CLAIM_MISSING", id="no-aud"),
        pytest.param(lambda: RSA.sign(sub=None), "TOKEN_CLAIM_MISSING", id="no-sub"),
        pytest.param(
            lambda: KeyPair(EC.kid, "RS256", RSA.private).sign(),
            "TOKEN_SIGNATURE_INVALID",
            id="rs256-naming-an-ec-key",
        ),
        pytest.param(
            lambda: KeyPair(RSA.kid, "ES256", EC.private).sign(),
            "TOKEN_SIGNATURE_INVALID",
            id="es256-naming-an-rsa-key",
        ),
        pytest.param(
            lambda: KeyPair("nobody-knows", "RS256", RSA.private).sign(),
            "TOKEN_KEY_UNKNOWN",
            id="unknown-kid",
        ),
        pytest.param(
            lambda: RSA.sign(headers={"kid": "../../../etc/passwd"}),
            "TOKEN_KID_INVALID",
            id="kid-path",
        ),
        pytest.param(
            lambda: RSA.sign(headers={"kid": "k'; DROP TABLE keys;--"}),
            "TOKEN_KID_INVALID",
            id="kid-injection",
        ),
        pytest.param(
            lambda: RSA.sign(headers={"kid": "${jndi:ldap://x/a}"}),
            "TOKEN_KID_INVALID",
            id="kid-template",
        ),
        pytest.param(lambda: RSA.sign({"padding": "x" * 9000}), "TOKEN_TOO_LARGE", id="oversized"),
    ],
)
async def test_bad_tokens_are_unauthenticated_with_a_reason(
    rs_server: RunningServer, token: Callable[[], str], reason: str
) -> None:
    code, got_reason, details = await rejected(rs_server, token())
    assert (code, got_reason) == (grpc.StatusCode.UNAUTHENTICATED, reason)
    assert "Bearer" not in details


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "TOKEN_MISSING"),
        ("Basic dXNlcjpwYXNz", "TOKEN_MALFORMED"),
        ("Bearer ", "TOKEN_MALFORMED"),
    ],
)
async def test_missing_or_non_bearer_credentials(
    rs_server: RunningServer, header: str | None, reason: str
) -> None:
    code, got_reason, _ = await rejected(rs_server, None, raw_header=header)
    assert (code, got_reason) == (grpc.StatusCode.UNAUTHENTICATED, reason)


async def test_leeway_accepts_slightly_expired_tokens(rs_server: RunningServer) -> None:
    assert await call(rs_server, RSA.sign(exp=int(time.time()) - 2)) == "acme/user-1"


async def test_a_token_without_the_scope_is_permission_denied(rs_server: RunningServer) -> None:
    code, reason, details = await rejected(rs_server, RSA.sign(scope="chat:read"), WRITE)
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "SCOPE_MISSING")
    assert "chat:write" in details


async def test_a_method_missing_from_the_scope_table_is_closed(rs_server: RunningServer) -> None:
    token = RSA.sign(scope="chat:read chat:write chat:admin chat:ingest")
    code, reason, _ = await rejected(rs_server, token, UNLISTED)
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "METHOD_NOT_ALLOWED")


@pytest.mark.parametrize(
    ("tenant", "reason"), [("initech", "TENANT_UNKNOWN"), ("frozen", "TENANT_DISABLED")]
)
async def test_unknown_or_disabled_tenants_are_permission_denied(
    rs_server: RunningServer, tenant: str, reason: str
) -> None:
    code, got_reason, _ = await rejected(rs_server, RSA.sign(tenant_id=tenant))
    assert (code, got_reason) == (grpc.StatusCode.PERMISSION_DENIED, reason)


async def test_health_and_reflection_need_no_token(rs_server: RunningServer) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc  # noqa: PLC0415

    async with grpc.aio.insecure_channel(rs_server.target) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for answer in stub.ServerReflectionInfo(iter([request]), timeout=5):
            names = {service.name for service in answer.list_services_response.service}
            assert "chat.v1.ChatService" in names
            break
        else:
            raise AssertionError("no reflection answer")


async def test_hs256_needs_its_secret_even_next_to_a_public_key(
    start_server: StartServer, tmp_path: Path
) -> None:
    key_file = tmp_path / "public.pem"
    key_file.write_bytes(RSA.public_pem())
    server = await start_server(
        CHAT_JWT_PUBLIC_KEY_FILE=str(key_file),
        CHAT_JWT_SECRET=HS_SECRET,
        CHAT_JWT_ALGORITHMS="RS256,HS256",
        CHAT_JWT_ISSUER=ISSUER,
        CHAT_JWT_AUDIENCE=AUDIENCE,
    )
    # Accepted: RS256 with the PEM key, HS256 with the configured secret.
    assert await call(server, RSA.sign(headers={"kid": None})) == "acme/user-1"
    assert await call(server, jwt.encode(standard_claims(), HS_SECRET, algorithm="HS256"))
    # The confusion attack now meets the secret, not the public key: bad signature.
    code, reason, _ = await rejected(server, _forged_hs256_with_public_key())
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_SIGNATURE_INVALID")


async def test_the_dev_setup_accepts_its_own_tokens(start_server: StartServer) -> None:
    from devstack.tokens import DEV_AUDIENCE, DEV_ISSUER, mint_dev_token  # noqa: PLC0415

    server = await start_server(
        CHAT_JWT_SECRET=HS_SECRET,
        CHAT_JWT_ISSUER=DEV_ISSUER,
        CHAT_JWT_AUDIENCE=DEV_AUDIENCE,
    )
    assert await call(server, mint_dev_token(secret=HS_SECRET, tenant_id="acme")) == (
        "acme/dev-user"
    )


def test_every_rpc_of_every_served_service_has_a_scope() -> None:
    methods = served_methods()
    assert methods, "no methods found"
    missing = methods - set(REQUIRED_SCOPES)
    assert not missing, f"RPCs without a scope: {sorted(missing)}"
    assert not set(REQUIRED_SCOPES) - methods, "scopes for RPCs that do not exist"
    assert not PUBLIC_METHODS & methods
    assert set(REQUIRED_SCOPES.values()) == {"chat:read", "chat:write", "chat:ingest", "chat:admin"}
