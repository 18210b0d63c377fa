"""Stored tenants: sealed secrets, kept secrets, request validation, the directory's view, and
the tenant quota defaults."""

from __future__ import annotations

import base64
import contextvars
import datetime as dt
import os
from pathlib import Path

import pytest

from chat.v1 import tenant_service_pb2
from server.api.tenants import tenant_from_proto
from server.auth.principal import Principal, bind_principal, bind_tenant
from server.domain.errors import InvalidArgument, SecretUnreadableError
from server.domain.tenant import (
    ChannelCredentials,
    Quotas,
    SlackCredentials,
    StoredTenant,
    Tenant,
    WhatsAppCredentials,
    with_kept_secrets,
)
from server.interceptors.rate_limit import RateLimitInterceptor
from server.metrics import Metrics
from server.repositories.secrets import SecretBox, SecretKeyError
from server.settings import Rate, RateLimitSettings
from server.tenancy.directory import TenantDirectory


def box() -> SecretBox:
    return SecretBox(os.urandom(32))


def test_a_sealed_secret_opens_only_in_its_own_place_and_under_its_key() -> None:
    secrets = box()
    sealed = secrets.seal("app-secret", context="acme/whatsapp/app_secret")
    assert "app-secret" not in sealed
    assert secrets.open(sealed, context="acme/whatsapp/app_secret") == "app-secret"
    # Fresh nonce each time: equal secrets do not look equal at rest.
    assert sealed != secrets.seal("app-secret", context="acme/whatsapp/app_secret")
    with pytest.raises(SecretUnreadableError):
        secrets.open(sealed, context="globex/whatsapp/app_secret")
    with pytest.raises(SecretUnreadableError):
        secrets.open(sealed, context="acme/whatsapp/access_token")
    with pytest.raises(SecretUnreadableError):
        box().open(sealed, context="acme/whatsapp/app_secret")
    version, payload = sealed.split(":")
    raw = bytearray(base64.b64decode(payload))
    raw[-1] ^= 1
    with pytest.raises(SecretUnreadableError):
        secrets.open(
            f"{version}:{base64.b64encode(raw).decode()}", context="acme/whatsapp/app_secret"
        )
    with pytest.raises(SecretUnreadableError):
        secrets.open("v9:AAAA", context="acme/whatsapp/app_secret")


def test_the_key_file_must_hold_32_base64_bytes(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    SecretBox.from_file(good)
    for name, content in (("short", base64.b64encode(os.urandom(16)).decode()), ("junk", "!!")):
        path = tmp_path / name
        path.write_text(content)
        with pytest.raises(SecretKeyError):
            SecretBox.from_file(path)
    with pytest.raises(SecretKeyError):
        SecretBox.from_file(tmp_path / "missing")


def test_empty_secrets_keep_the_previous_values_per_channel() -> None:
    previous = Tenant(
        id="t",
        channels=ChannelCredentials(
            whatsapp=WhatsAppCredentials(
                phone_number_id="1", app_secret="old-secret", access_token="old-token"
            ),
            slack=SlackCredentials(signing_secret="s", bot_token="b"),
        ),
    )
    update = Tenant(
        id="t",
        channels=ChannelCredentials(
            whatsapp=WhatsAppCredentials(phone_number_id="2", access_token="new-token")
        ),
    )
    merged = with_kept_secrets(update, previous)
    assert merged.channels.whatsapp == WhatsAppCredentials(
        phone_number_id="2", app_secret="old-secret", access_token="new-token"
    )
    assert merged.channels.slack is None
    assert with_kept_secrets(update, None) == update


def test_output_only_fields_are_ignored_and_the_id_comes_from_the_token() -> None:
    message = tenant_service_pb2.Tenant(id="someone-else", enabled=True, display_name="Mine")
    message.channels.whatsapp.phone_number_id = "123"
    message.channels.whatsapp.app_secret_set = True
    message.update_time.FromDatetime(dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
    tenant = tenant_from_proto("mine", message)
    assert tenant.id == "mine"
    assert tenant.update_time is None
    assert tenant.channels.whatsapp == WhatsAppCredentials(phone_number_id="123")


def test_every_invalid_field_is_reported() -> None:
    message = tenant_service_pb2.Tenant(enabled=True, display_name="bad\nname")
    message.quotas.requests_per_second = float("inf")
    message.channels.messenger.page_id = "12ab"
    message.channels.messenger.app_secret = "x" * 1025
    message.channels.teams.app_id = "app"
    message.channels.teams.app_tenant_id = "bad tenant"
    with pytest.raises(InvalidArgument) as caught:
        tenant_from_proto("t", message)
    assert sorted(v.field for v in caught.value.field_violations) == [
        "tenant.channels.messenger.app_secret",
        "tenant.channels.messenger.page_id",
        "tenant.channels.teams.app_tenant_id",
        "tenant.display_name",
        "tenant.quotas.requests_per_second",
    ]


def test_file_tenants_shadow_stored_ones_and_old_revisions_do_not_overwrite() -> None:
    directory = TenantDirectory(
        file_tenants={"acme": Tenant(id="acme", display_name="file")}, store=None
    )
    assert directory.loaded
    directory.remember(StoredTenant(Tenant(id="acme", display_name="stored"), revision=1))
    assert directory.get("acme") == Tenant(id="acme", display_name="file")
    assert directory.from_file("acme")
    directory.remember(StoredTenant(Tenant(id="new", display_name="second"), revision=2))
    directory.remember(StoredTenant(Tenant(id="new", display_name="first"), revision=1))
    assert directory.get("new") == Tenant(id="new", display_name="second")
    assert not directory.from_file("new")
    assert {t.id for t in directory.tenants()} == {"acme", "new"}
    assert directory.get("other") is None


@pytest.mark.parametrize(
    ("quotas", "expected"),
    [
        (Quotas(), (100.0, 200)),  # the defaults, burst included
        (Quotas(burst=7), (100.0, 7)),
        (Quotas(requests_per_second=5), (5.0, 5)),
        (Quotas(requests_per_second=0.2), (0.2, 1)),
        (Quotas(requests_per_second=5, burst=9), (5.0, 9)),
    ],
)
def test_tenant_quotas_fall_back_to_the_defaults(
    quotas: Quotas, expected: tuple[float, int]
) -> None:
    interceptor = RateLimitInterceptor(
        limiter=None,  # type: ignore[arg-type] - limits() does not touch the store
        settings=RateLimitSettings(
            tenant=Rate(per_second=100, burst=200),
            user=Rate(per_second=20, burst=40),
            methods={},
            fail_open=True,
            timeout_seconds=0.25,
        ),
        metrics=Metrics(),
    )

    def limits() -> tuple[float, int]:
        bind_principal(Principal(subject="u", tenant_id="t", scopes=frozenset({"chat:read"})))
        bind_tenant(Tenant(id="t", quotas=quotas))
        [tenant_limit, *_] = interceptor.limits("/chat.v1.ChatService/ListConversations")
        return tenant_limit.per_second, tenant_limit.burst

    assert contextvars.copy_context().run(limits) == expected
