"""Tenant isolation: the tenant comes from the token only, and must be known and enabled."""

from __future__ import annotations

from typing import Any

import grpc
import structlog

from server.auth.principal import bind_tenant, current_principal
from server.auth.scopes import TENANT_CREATING_METHODS
from server.domain.errors import PermissionDenied, Unavailable
from server.domain.tenant import Tenant, TenantCatalog
from server.interceptors.checks import CallerCheck


class TenantInterceptor(CallerCheck):
    """Binds the caller's tenant to the call and its log lines."""

    def __init__(self, *, directory: TenantCatalog) -> None:
        self._directory = directory

    async def check(
        self,
        context: grpc.aio.ServicerContext[Any, Any],  # noqa: ARG002 - the base's signature
        method_name: str,
    ) -> None:
        tenant_id = current_principal().tenant_id
        tenant = self._directory.get(tenant_id)
        if tenant is None and not self._directory.loaded:
            raise Unavailable("tenants are still loading", reason="TENANTS_LOADING")
        if tenant is None and method_name in TENANT_CREATING_METHODS:
            # UpsertTenant creates the caller's tenant; until then it has default quotas.
            tenant = Tenant(id=tenant_id)
        # The same answer for unknown and disabled would hide which tenants exist, but an
        # operator debugging a disabled tenant needs to tell them apart; ids are not secret.
        if tenant is None:
            raise PermissionDenied("tenant not known", reason="TENANT_UNKNOWN")
        if not tenant.enabled:
            raise PermissionDenied("tenant disabled", reason="TENANT_DISABLED")
        structlog.contextvars.bind_contextvars(tenant_id=tenant.id)
        bind_tenant(tenant)
