"""A tenant, its channel credentials and quotas. Secrets are kept out of ``repr``."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class WhatsAppCredentials:
    """WhatsApp Business Cloud API configuration of one tenant."""

    phone_number_id: str = ""
    verify_token: str = field(default="", repr=False)
    app_secret: str = field(default="", repr=False)
    access_token: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class MessengerCredentials:
    """Messenger Platform configuration of one tenant."""

    page_id: str = ""
    verify_token: str = field(default="", repr=False)
    app_secret: str = field(default="", repr=False)
    page_access_token: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class SlackCredentials:
    """Slack app configuration of one tenant."""

    signing_secret: str = field(default="", repr=False)
    bot_token: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class TeamsCredentials:
    """Bot Framework registration of one tenant."""

    app_id: str = ""
    app_tenant_id: str = ""
    app_password: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class WebChannel:
    """The web chat widget of one tenant (the gateway in the webhook bridge)."""

    #: Public: the embed snippet carries it.
    site_key: str = ""
    #: Exact origins (scheme://host[:port]) of the pages that may embed the widget.
    allowed_origins: tuple[str, ...] = ()
    #: Signs logged-in users' ids (HMAC-SHA256); empty: every visitor is anonymous.
    identity_secret: str = field(default="", repr=False)
    #: Messages a visitor may send per minute; 0: the gateway's default.
    visitor_messages_per_minute: int = 0


@dataclass(frozen=True, slots=True)
class ChannelCredentials:
    """Each platform's configuration; None where the tenant has not configured it."""

    whatsapp: WhatsAppCredentials | None = None
    messenger: MessengerCredentials | None = None
    slack: SlackCredentials | None = None
    teams: TeamsCredentials | None = None
    web: WebChannel | None = None


@dataclass(frozen=True, slots=True)
class Quotas:
    """Rate limits; 0 means the service default."""

    requests_per_second: float = 0.0
    burst: int = 0


@dataclass(frozen=True, slots=True)
class Tenant:
    """One customer of the service."""

    id: str
    enabled: bool = True
    display_name: str = ""
    channels: ChannelCredentials = field(default_factory=ChannelCredentials)
    quotas: Quotas = field(default_factory=Quotas)
    #: When a stored configuration last changed (None for tenants from the tenants file).
    update_time: dt.datetime | None = None


class TenantLookup(Protocol):
    """Finds tenants by id: a plain mapping, or the live directory of stored tenants."""

    def get(self, tenant_id: str, /) -> Tenant | None:
        """The tenant, or None when unknown."""
        ...


class TenantCatalog(TenantLookup, Protocol):
    """A lookup that may still be loading stored tenants: until it has, unknown is not final."""

    @property
    def loaded(self) -> bool:
        """Whether the stored tenants have been read at least once."""
        ...


def secret_fields(cls: type[Any]) -> frozenset[str]:
    """The fields of a credentials record that are secrets (kept out of ``repr``)."""
    return frozenset(f.name for f in fields(cls) if not f.repr)


class TenantDocumentError(ValueError):
    """A stored tenant document this store cannot read (not in the shape it writes)."""


class AddressTakenError(Exception):
    """Another stored tenant has this WhatsApp phone number id or Messenger page id."""

    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


class RevisionConflictError(Exception):
    """Another writer changed the tenant since it was read."""


@dataclass(frozen=True, slots=True)
class StoredTenant:
    """A stored tenant with the revision it was read at."""

    tenant: Tenant
    revision: int


def with_kept_secrets(update: Tenant, previous: Tenant | None) -> Tenant:
    """``update`` with each empty secret taken from ``previous`` (the contract: an empty
    secret keeps its stored value). A channel ``update`` leaves unset is removed."""
    if previous is None:
        return update
    channels: dict[str, Any] = {}
    for name in CHANNEL_TYPES:
        record = getattr(update.channels, name)
        before = getattr(previous.channels, name)
        if record is not None and before is not None:
            kept = {
                secret: getattr(before, secret)
                for secret in secret_fields(type(record))
                if not getattr(record, secret)
            }
            record = replace(record, **kept)
        channels[name] = record
    return replace(update, channels=ChannelCredentials(**channels))


#: Tenant ids appear in webhook URLs and Redis keys: 1-63 of a-z, 0-9, "_" and "-".
TENANT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


#: The stored tenants' fields that identify them to a platform: one tenant each.
WHATSAPP_NUMBER = "channels.whatsapp.phone_number_id"
MESSENGER_PAGE = "channels.messenger.page_id"


CHANNEL_TYPES: dict[str, type[Any]] = {
    "whatsapp": WhatsAppCredentials,
    "messenger": MessengerCredentials,
    "slack": SlackCredentials,
    "teams": TeamsCredentials,
    "web": WebChannel,
}

#: Fields of a channel record that are not strings: stored and read as they are.
NON_STRING_FIELDS: dict[str, type] = {
    "allowed_origins": tuple,
    "visitor_messages_per_minute": int,
}

#: A site key: public, in the embed snippet.
SITE_KEY = re.compile(r"^[A-Za-z0-9_-]{8,128}$")
#: An exact web origin: scheme, host, optional port; nothing after.
WEB_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?$")
MAX_ALLOWED_ORIGINS = 32

#: The most messages per minute a tenant may allow one visitor.
MAX_VISITOR_MESSAGES_PER_MINUTE = 600


def web_channel_problems(web: WebChannel) -> list[tuple[str, str]]:
    """What is wrong with a web channel configuration: (field, description) pairs."""
    problems = []
    if not SITE_KEY.match(web.site_key):
        problems.append(("site_key", "required: 8 to 128 of A-Z, a-z, 0-9, '_' and '-'"))
    if not 1 <= len(web.allowed_origins) <= MAX_ALLOWED_ORIGINS or not all(
        WEB_ORIGIN.match(origin) for origin in web.allowed_origins
    ):
        problems.append(
            (
                "allowed_origins",
                f"1 to {MAX_ALLOWED_ORIGINS} exact origins such as https://example.com "
                "(scheme, host, optional port; no path)",
            )
        )
    if not 0 <= web.visitor_messages_per_minute <= MAX_VISITOR_MESSAGES_PER_MINUTE:
        problems.append(
            ("visitor_messages_per_minute", f"0 (the default) to {MAX_VISITOR_MESSAGES_PER_MINUTE}")
        )
    return problems
