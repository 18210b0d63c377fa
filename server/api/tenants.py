"""TenantService: the caller's tenant configuration, secrets removed."""

from __future__ import annotations

from typing import Any

from chat.v1 import tenant_service_pb2, tenant_service_pb2_grpc
from server.auth.principal import current_tenant
from server.domain.errors import Unimplemented
from server.domain.tenant import Tenant


class TenantServicer(tenant_service_pb2_grpc.TenantServiceServicer):
    """Reads the tenant the caller's token names (the tenant interceptor found it)."""

    async def GetTenant(
        self, request: tenant_service_pb2.GetTenantRequest, context: Any
    ) -> tenant_service_pb2.GetTenantResponse:
        """The caller's tenant."""
        return tenant_service_pb2.GetTenantResponse(tenant=tenant_to_proto(current_tenant()))

    async def UpsertTenant(
        self, request: tenant_service_pb2.UpsertTenantRequest, context: Any
    ) -> tenant_service_pb2.UpsertTenantResponse:
        """Not available yet: tenants come from CHAT_TENANTS_FILE until stored tenants land."""
        raise Unimplemented(
            "tenants are configured in CHAT_TENANTS_FILE; UpsertTenant is not available yet"
        )


def tenant_to_proto(tenant: Tenant) -> tenant_service_pb2.Tenant:
    """The tenant as the contract shows it: secrets never leave, only whether each is set."""
    message = tenant_service_pb2.Tenant(
        id=tenant.id,
        enabled=tenant.enabled,
        display_name=tenant.display_name,
        quotas=tenant_service_pb2.Quotas(
            requests_per_second=tenant.quotas.requests_per_second, burst=tenant.quotas.burst
        ),
    )
    channels = tenant.channels
    if channels.whatsapp is not None:
        w = channels.whatsapp
        message.channels.whatsapp.CopyFrom(
            tenant_service_pb2.WhatsAppConfig(
                phone_number_id=w.phone_number_id,
                verify_token_set=bool(w.verify_token),
                app_secret_set=bool(w.app_secret),
                access_token_set=bool(w.access_token),
            )
        )
    if channels.messenger is not None:
        m = channels.messenger
        message.channels.messenger.CopyFrom(
            tenant_service_pb2.MessengerConfig(
                page_id=m.page_id,
                verify_token_set=bool(m.verify_token),
                app_secret_set=bool(m.app_secret),
                page_access_token_set=bool(m.page_access_token),
            )
        )
    if channels.slack is not None:
        s = channels.slack
        message.channels.slack.CopyFrom(
            tenant_service_pb2.SlackConfig(
                signing_secret_set=bool(s.signing_secret), bot_token_set=bool(s.bot_token)
            )
        )
    if channels.teams is not None:
        t = channels.teams
        message.channels.teams.CopyFrom(
            tenant_service_pb2.TeamsConfig(
                app_id=t.app_id,
                app_tenant_id=t.app_tenant_id,
                app_password_set=bool(t.app_password),
            )
        )
    return message
