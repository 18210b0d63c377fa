"""Who is calling, bound to the call's context by the auth and tenant interceptors."""

from __future__ import annotations

import math
from contextvars import ContextVar
from dataclasses import dataclass

from server.auth.scopes import CHAT_WEB
from server.domain.errors import Unauthenticated
from server.domain.tenant import Tenant


@dataclass(frozen=True, slots=True)
class Principal:
    """The verified token's identity: subject, tenant and scopes."""

    subject: str
    tenant_id: str
    scopes: frozenset[str]
    #: The token's ``exp`` (seconds since the epoch): long streams end when it passes.
    expires_at: float = math.inf

    @property
    def visitor(self) -> bool:
        """A web chat visitor: held to its own WEB conversations whatever else it carries."""
        return CHAT_WEB in self.scopes


_principal: ContextVar[Principal | None] = ContextVar("principal", default=None)
_tenant: ContextVar[Tenant | None] = ContextVar("tenant", default=None)


def bind_principal(principal: Principal) -> None:
    """Set the caller for the rest of this call (each call runs in its own task)."""
    _principal.set(principal)


def bind_tenant(tenant: Tenant) -> None:
    """Set the caller's tenant for the rest of this call."""
    _tenant.set(tenant)


def current_principal() -> Principal:
    """The caller; raises when the call was not authenticated (a wiring error)."""
    principal = _principal.get()
    if principal is None:
        raise Unauthenticated("no authenticated caller", reason="TOKEN_MISSING")
    return principal


def current_tenant() -> Tenant:
    """The caller's tenant, as the tenant interceptor found it."""
    tenant = _tenant.get()
    if tenant is None:
        raise Unauthenticated("no authenticated caller", reason="TOKEN_MISSING")
    return tenant
