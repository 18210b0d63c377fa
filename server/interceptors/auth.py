"""Authentication and authorization: a valid bearer token with the scope the RPC needs.

Health and reflection are public. Every other method must be in the scope table; one that is
not is refused, so a new RPC stays closed until its scope is decided.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
import structlog

from server.auth.principal import bind_principal
from server.auth.scopes import WEB_METHODS
from server.auth.tokens import MAX_TOKEN_BYTES, TokenVerifier
from server.domain.errors import DomainError, PermissionDenied, Unauthenticated
from server.interceptors.checks import CallerCheck
from server.metrics import Metrics

_BEARER = "bearer "


class AuthInterceptor(CallerCheck):
    """Verifies the token, checks the scope, binds the caller to the call."""

    def __init__(
        self, *, verifier: TokenVerifier, required_scopes: Mapping[str, str], metrics: Metrics
    ) -> None:
        self._verifier = verifier
        self._scopes = required_scopes
        self._metrics = metrics

    async def check(self, context: grpc.aio.ServicerContext[Any, Any], method_name: str) -> None:
        try:
            await self._authorize(context, method_name)
        except DomainError as exc:
            self._metrics.auth_rejected.labels(reason=exc.reason).inc()
            raise

    async def _authorize(self, context: grpc.aio.ServicerContext[Any, Any], method: str) -> None:
        token = _bearer_token(context)
        principal = await self._verifier.verify(token)
        structlog.contextvars.bind_contextvars(subject=principal.subject)
        required = self._scopes.get(method)
        if required is None:
            raise PermissionDenied("method not open to callers", reason="METHOD_NOT_ALLOWED")
        if principal.visitor:
            # A visitor token reaches the web chat's methods only, even if it also carries
            # another scope: the servicer holds it to its own conversations.
            if method not in WEB_METHODS:
                raise PermissionDenied(
                    "a web visitor's token may only chat in its own conversations",
                    reason="VISITOR_METHOD_NOT_ALLOWED",
                )
            bind_principal(principal)
            return
        if required not in principal.scopes:
            raise PermissionDenied(
                f"token lacks scope {required}",
                reason="SCOPE_MISSING",
                metadata={"required_scope": required},
            )
        bind_principal(principal)


def _bearer_token(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    values = [
        value for key, value in (context.invocation_metadata() or ()) if key == "authorization"
    ]
    if not values:
        raise Unauthenticated("bearer token required", reason="TOKEN_MISSING")
    raw = values[0]
    if not isinstance(raw, str) or len(values) > 1:
        raise Unauthenticated("token malformed", reason="TOKEN_MALFORMED")
    if len(raw) > MAX_TOKEN_BYTES + len(_BEARER):
        raise Unauthenticated("token too large", reason="TOKEN_TOO_LARGE")
    if not raw[: len(_BEARER)].lower() == _BEARER or not raw[len(_BEARER) :].strip():
        raise Unauthenticated("expected 'authorization: Bearer <token>'", reason="TOKEN_MALFORMED")
    return raw[len(_BEARER) :].strip()
