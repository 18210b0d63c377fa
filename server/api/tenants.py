"""TenantService: the caller's tenant configuration, secrets removed."""

from __future__ import annotations

import math
import re
from typing import Any

from chat.v1 import tenant_service_pb2, tenant_service_pb2_grpc
from server.auth.principal import current_principal, current_tenant
from server.domain.errors import FieldViolation, InvalidArgument
from server.domain.tenant import (
    ChannelCredentials,
    MessengerCredentials,
    Quotas,
    SlackCredentials,
    TeamsCredentials,
    Tenant,
    WebChannel,
    WhatsAppCredentials,
    web_channel_problems,
)
from server.services.tenants import TenantAdmin, tenant_to_proto

_DIGITS = re.compile(r"^[0-9]{1,32}$")
_APP_ID = re.compile(r"^[A-Za-z0-9-]{1,128}$")
_AZURE_TENANT = re.compile(r"^[A-Za-z0-9.-]{1,128}$")
_SECRET = re.compile(r"^[\x21-\x7e]{0,1024}$")
_MAX_DISPLAY_NAME = 200
_MAX_RATE = 100_000.0
_MAX_BURST = 1_000_000
_MAX_REQUEST_ID = 128


class TenantServicer(tenant_service_pb2_grpc.TenantServiceServicer):
    """Reads and writes the tenant the caller's token names (never one from the request)."""

    def __init__(self, *, admin: TenantAdmin) -> None:
        self._admin = admin

    async def GetTenant(
        self, request: tenant_service_pb2.GetTenantRequest, context: Any
    ) -> tenant_service_pb2.GetTenantResponse:
        """The caller's tenant."""
        return tenant_service_pb2.GetTenantResponse(tenant=tenant_to_proto(current_tenant()))

    async def UpsertTenant(
        self, request: tenant_service_pb2.UpsertTenantRequest, context: Any
    ) -> tenant_service_pb2.UpsertTenantResponse:
        """Create or replace the caller's tenant; a retry with the same request_id is answered
        from the first call's record."""
        if len(request.request_id) > _MAX_REQUEST_ID:
            raise InvalidArgument(
                "request_id is too long",
                field_violations=[
                    FieldViolation("request_id", f"at most {_MAX_REQUEST_ID} characters")
                ],
            )
        tenant = tenant_from_proto(current_principal().tenant_id, request.tenant)
        return await self._admin.upsert(
            tenant,
            request_id=request.request_id,
            request=request.tenant.SerializeToString(deterministic=True),
        )


def tenant_from_proto(tenant_id: str, message: tenant_service_pb2.Tenant) -> Tenant:
    """The requested configuration for ``tenant_id``; every invalid field is reported at once.
    Output-only fields (id, update_time, *_set) are ignored."""
    violations: list[FieldViolation] = []

    def check(ok: bool, field: str, description: str) -> None:
        if not ok:
            violations.append(FieldViolation(f"tenant.{field}", description))

    check(
        len(message.display_name) <= _MAX_DISPLAY_NAME and message.display_name.isprintable(),
        "display_name",
        f"at most {_MAX_DISPLAY_NAME} printable characters",
    )
    rate, burst = message.quotas.requests_per_second, message.quotas.burst
    check(
        math.isfinite(rate) and 0 <= rate <= _MAX_RATE,
        "quotas.requests_per_second",
        f"a number from 0 (the service default) to {_MAX_RATE:g}",
    )
    check(
        0 <= burst <= _MAX_BURST,
        "quotas.burst",
        f"an integer from 0 (the service default) to {_MAX_BURST}",
    )
    channels = message.channels

    def secrets(prefix: str, record: Any, names: tuple[str, ...]) -> None:
        for name in names:
            check(
                bool(_SECRET.match(getattr(record, name))),
                f"channels.{prefix}.{name}",
                "at most 1024 visible ASCII characters, no spaces",
            )

    whatsapp = messenger = slack = teams = web = None
    if channels.HasField("whatsapp"):
        w = channels.whatsapp
        check(
            bool(_DIGITS.match(w.phone_number_id)),
            "channels.whatsapp.phone_number_id",
            "required: the phone number id, digits only",
        )
        secrets("whatsapp", w, ("verify_token", "app_secret", "access_token"))
        whatsapp = WhatsAppCredentials(
            phone_number_id=w.phone_number_id,
            verify_token=w.verify_token,
            app_secret=w.app_secret,
            access_token=w.access_token,
        )
    if channels.HasField("messenger"):
        m = channels.messenger
        check(
            bool(_DIGITS.match(m.page_id)),
            "channels.messenger.page_id",
            "required: the page id, digits only",
        )
        secrets("messenger", m, ("verify_token", "app_secret", "page_access_token"))
        messenger = MessengerCredentials(
            page_id=m.page_id,
            verify_token=m.verify_token,
            app_secret=m.app_secret,
            page_access_token=m.page_access_token,
        )
    if channels.HasField("slack"):
        sl = channels.slack
        secrets("slack", sl, ("signing_secret", "bot_token"))
        slack = SlackCredentials(signing_secret=sl.signing_secret, bot_token=sl.bot_token)
    if channels.HasField("teams"):
        t = channels.teams
        check(
            bool(_APP_ID.match(t.app_id)),
            "channels.teams.app_id",
            "required: the bot's Microsoft app id",
        )
        check(
            not t.app_tenant_id or bool(_AZURE_TENANT.match(t.app_tenant_id)),
            "channels.teams.app_tenant_id",
            "an Azure AD tenant id or domain",
        )
        secrets("teams", t, ("app_password",))
        teams = TeamsCredentials(
            app_id=t.app_id, app_tenant_id=t.app_tenant_id, app_password=t.app_password
        )
    if channels.HasField("web"):
        wb = channels.web
        secrets("web", wb, ("identity_secret",))
        web = WebChannel(
            site_key=wb.site_key,
            allowed_origins=tuple(wb.allowed_origins),
            identity_secret=wb.identity_secret,
            visitor_messages_per_minute=wb.visitor_messages_per_minute,
        )
        for field, problem in web_channel_problems(web):
            check(False, f"channels.web.{field}", problem)
    if violations:
        raise InvalidArgument("the tenant configuration is invalid", field_violations=violations)
    return Tenant(
        id=tenant_id,
        enabled=message.enabled,
        display_name=message.display_name,
        channels=ChannelCredentials(
            whatsapp=whatsapp, messenger=messenger, slack=slack, teams=teams, web=web
        ),
        quotas=Quotas(requests_per_second=rate, burst=burst),
    )
