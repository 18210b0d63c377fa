"""Creating and changing tenants through TenantService."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import replace

import structlog

from chat.v1 import tenant_service_pb2
from server.domain.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    PermissionDenied,
    SecretUnreadableError,
)
from server.domain.tenant import (
    MESSENGER_PAGE,
    TENANT_ID,
    WHATSAPP_NUMBER,
    AddressTakenError,
    RevisionConflictError,
    StoredTenant,
    Tenant,
    TenantDocumentError,
    with_kept_secrets,
)
from server.services.idempotency import IdempotentRequests, RequestKey
from server.services.ports import TenantStore, TransactionRunner, Tx
from server.tenancy.directory import TenantDirectory

log = structlog.get_logger(__name__)

UPSERT_TENANT = "UpsertTenant"
_ATTEMPTS = 3


class TenantAdmin:
    """UpsertTenant: validated, secrets kept when left empty, one writer at a time per tenant,
    replays answered from the first call's record."""

    def __init__(
        self,
        *,
        store: TenantStore,
        directory: TenantDirectory,
        transactions: TransactionRunner,
        requests: IdempotentRequests,
        clock: Callable[[], dt.datetime],
    ) -> None:
        """``clock`` gives times at MongoDB's precision (milliseconds), as utc_now does."""
        self._store = store
        self._directory = directory
        self._transactions = transactions
        self._requests = requests
        self._clock = clock

    async def upsert(
        self, update: Tenant, *, request_id: str = "", request: bytes = b""
    ) -> tenant_service_pb2.UpsertTenantResponse:
        """Create or replace ``update.id``'s configuration; the stored tenant, secrets removed.
        ``request`` is the request's deterministic encoding: its keyed digest, not a plain
        hash (it holds the tenant's secrets), identifies it to IdempotentRequests."""
        self._check_allowed(update)
        fingerprint = self._store.fingerprint(request) if request_id else ""
        key = RequestKey(update.id, UPSERT_TENANT, request_id, fingerprint)
        return await self._requests.once(
            key,
            tenant_service_pb2.UpsertTenantResponse.FromString,
            lambda: self._upsert(update, key),
        )

    async def _upsert(
        self, update: Tenant, key: RequestKey
    ) -> tenant_service_pb2.UpsertTenantResponse:
        self._check_addresses_free(update)
        for _ in range(_ATTEMPTS):
            current = await self._current(update.id)
            self._check_transition(update, current)
            tenant = replace(
                with_kept_secrets(update, current.tenant if current else None),
                update_time=self._clock(),
            )
            response = tenant_service_pb2.UpsertTenantResponse(tenant=tenant_to_proto(tenant))

            async def work(
                tx: Tx,
                tenant: Tenant = tenant,
                current: StoredTenant | None = current,
                response: tenant_service_pb2.UpsertTenantResponse = response,
            ) -> StoredTenant:
                stored = await self._store.save(
                    tenant,
                    expected_revision=current.revision if current else None,
                    tx=tx,
                )
                await self._requests.record(
                    key, response, now=tenant.update_time or self._clock(), tx=tx
                )
                return stored

            try:
                stored = await self._transactions.run(work)
            except RevisionConflictError:
                continue
            except AddressTakenError as exc:
                raise _address_taken(exc.field) from None
            self._directory.remember(stored)
            log.info("tenant_upserted", tenant_id=tenant.id, revision=stored.revision)
            return response
        raise Aborted(
            "the tenant was changed concurrently; read it again and retry",
            reason="TENANT_CHANGED_CONCURRENTLY",
        )

    def _check_allowed(self, update: Tenant) -> None:
        if not TENANT_ID.match(update.id):
            raise InvalidArgument(
                "the token's tenant_id cannot name a stored tenant: 1-63 characters of a-z, "
                "0-9, '_' or '-', starting with a letter or digit",
                reason="TENANT_ID_INVALID",
            )
        if self._directory.from_file(update.id):
            raise FailedPrecondition(
                "this tenant is configured in the tenants file (CHAT_TENANTS_FILE); "
                "change it there",
                reason="TENANT_MANAGED_BY_FILE",
            )
        if not self._store.writable:
            raise FailedPrecondition(
                "stored tenants need a secrets key: set CHAT_TENANT_SECRETS_KEY_FILE",
                reason="TENANT_STORE_DISABLED",
            )

    async def _current(self, tenant_id: str) -> StoredTenant | None:
        try:
            return await self._store.get(tenant_id)
        except (SecretUnreadableError, TenantDocumentError):
            # Replacing it would drop secrets this server cannot read: the operator must look.
            raise FailedPrecondition(
                "the stored configuration of this tenant cannot be read by this server "
                "(another CHAT_TENANT_SECRETS_KEY_FILE, or edited by hand); see the server log",
                reason="TENANT_UNREADABLE",
            ) from None

    @staticmethod
    def _check_transition(update: Tenant, current: StoredTenant | None) -> None:
        if current is None and not update.enabled:
            # A disabled tenant's calls are refused, this one included: creating one
            # disabled would lock its admins out before they could use it.
            raise InvalidArgument(
                "a new tenant must be enabled",
                field_violations=[FieldViolation("tenant.enabled", "set it to true")],
            )
        if current is not None and not current.tenant.enabled:
            # The interceptor refuses disabled tenants; this catches a process whose view
            # lags the store. Only an operator enables a tenant again.
            raise PermissionDenied("tenant disabled", reason="TENANT_DISABLED")

    def _check_addresses_free(self, update: Tenant) -> None:
        """A WhatsApp number or Messenger page belongs to one tenant: inbound events are
        matched to their tenant by it. File tenants are checked here; stored ones also by
        unique indexes, which catch concurrent claims."""
        whatsapp, messenger = update.channels.whatsapp, update.channels.messenger
        for other in self._directory.tenants():
            if other.id == update.id:
                continue
            if (
                whatsapp is not None
                and other.channels.whatsapp is not None
                and other.channels.whatsapp.phone_number_id == whatsapp.phone_number_id
            ):
                raise _address_taken(WHATSAPP_NUMBER)
            if (
                messenger is not None
                and other.channels.messenger is not None
                and other.channels.messenger.page_id == messenger.page_id
            ):
                raise _address_taken(MESSENGER_PAGE)


def _address_taken(field: str) -> AlreadyExists:
    if field == MESSENGER_PAGE:
        return AlreadyExists("another tenant uses this Messenger page_id", reason="PAGE_ID_TAKEN")
    return AlreadyExists(
        "another tenant uses this WhatsApp phone_number_id", reason="PHONE_NUMBER_ID_TAKEN"
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
    if tenant.update_time is not None:
        message.update_time.FromDatetime(tenant.update_time)
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
    if channels.web is not None:
        wb = channels.web
        message.channels.web.CopyFrom(
            tenant_service_pb2.WebConfig(
                site_key=wb.site_key,
                allowed_origins=list(wb.allowed_origins),
                visitor_messages_per_minute=wb.visitor_messages_per_minute,
                identity_secret_set=bool(wb.identity_secret),
            )
        )
    return message
