"""A tenant, its channel credentials and quotas. Secrets are kept out of ``repr``."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Protocol


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
class ChannelCredentials:
    """Each platform's configuration; None where the tenant has not configured it."""

    whatsapp: WhatsAppCredentials | None = None
    messenger: MessengerCredentials | None = None
    slack: SlackCredentials | None = None
    teams: TeamsCredentials | None = None


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
