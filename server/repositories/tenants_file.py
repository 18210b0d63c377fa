"""Loads tenants from the YAML tenants file (``CHAT_TENANTS_FILE``).

Strings may reference the environment as ``${NAME}`` so secrets need not live in the file.
Unknown keys are errors: a misspelt secret name would otherwise silently disable a channel.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from server.domain.tenant import (
    TENANT_ID,
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

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_CHANNEL_TYPES: dict[str, type[Any]] = {
    "whatsapp": WhatsAppCredentials,
    "messenger": MessengerCredentials,
    "slack": SlackCredentials,
    "teams": TeamsCredentials,
    "web": WebChannel,
}
_TENANT_KEYS = {"id", "enabled", "display_name", "channels", "quotas"}

T = TypeVar("T")


class TenantsFileError(ValueError):
    """The tenants file is unreadable or invalid; the message says where."""


def load_tenants(path: Path, environ: Mapping[str, str] | None = None) -> dict[str, Tenant]:
    """Parse ``path`` into tenants keyed by id."""
    env = os.environ if environ is None else environ
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TenantsFileError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise TenantsFileError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("tenants"), list):
        raise TenantsFileError(f"{path}: expected a mapping with a 'tenants' list")
    tenants: dict[str, Tenant] = {}
    for index, raw in enumerate(document["tenants"]):
        where = f"{path}: tenants[{index}]"
        tenant = _tenant(raw, where, env)
        if tenant.id in tenants:
            raise TenantsFileError(f"{where}: duplicate tenant id {tenant.id!r}")
        tenants[tenant.id] = tenant
    return tenants


def _tenant(raw: object, where: str, env: Mapping[str, str]) -> Tenant:
    data = _mapping(raw, where, _TENANT_KEYS)
    tenant_id = data.get("id")
    if not isinstance(tenant_id, str) or not TENANT_ID.match(tenant_id):
        raise TenantsFileError(
            f"{where}.id: expected 1-63 characters of a-z, 0-9, '_' or '-', "
            "starting with a letter or digit"
        )
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise TenantsFileError(f"{where}.enabled: expected true or false")
    channels_raw = _mapping(data.get("channels", {}), f"{where}.channels", set(_CHANNEL_TYPES))
    channels = ChannelCredentials(
        **{
            name: _record(cls, value, f"{where}.channels.{name}", env)
            for name, value in channels_raw.items()
            for cls in [_CHANNEL_TYPES[name]]
        }
    )
    quotas = _quotas(data.get("quotas", {}), f"{where}.quotas")
    return Tenant(
        id=tenant_id,
        enabled=enabled,
        display_name=_string(data.get("display_name", ""), f"{where}.display_name", env),
        channels=channels,
        quotas=quotas,
    )


def _record(cls: type[T], raw: object, where: str, env: Mapping[str, str]) -> T:
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    data = _mapping(raw, where, names)
    if cls is WebChannel:
        return _web(data, where, env)  # type: ignore[return-value]
    return cls(**{key: _string(value, f"{where}.{key}", env) for key, value in data.items()})


def _web(data: dict[str, Any], where: str, env: Mapping[str, str]) -> WebChannel:
    origins = data.get("allowed_origins", [])
    if not isinstance(origins, list):
        raise TenantsFileError(f"{where}.allowed_origins: expected a list of origins")
    quota = data.get("visitor_messages_per_minute", 0)
    if not isinstance(quota, int) or isinstance(quota, bool):
        raise TenantsFileError(f"{where}.visitor_messages_per_minute: expected an integer")
    web = WebChannel(
        site_key=_string(data.get("site_key", ""), f"{where}.site_key", env),
        allowed_origins=tuple(
            _string(o, f"{where}.allowed_origins[{i}]", env) for i, o in enumerate(origins)
        ),
        identity_secret=_string(data.get("identity_secret", ""), f"{where}.identity_secret", env),
        visitor_messages_per_minute=quota,
    )
    for field, problem in web_channel_problems(web):
        raise TenantsFileError(f"{where}.{field}: {problem}")
    return web


def _quotas(raw: object, where: str) -> Quotas:
    data = _mapping(raw, where, {"requests_per_second", "burst"})
    rate = data.get("requests_per_second", 0)
    if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 <= rate < math.inf:
        raise TenantsFileError(f"{where}.requests_per_second: expected a non-negative number")
    burst = data.get("burst", 0)
    if not isinstance(burst, int) or isinstance(burst, bool) or burst < 0:
        raise TenantsFileError(f"{where}.burst: expected a non-negative integer")
    return Quotas(requests_per_second=float(rate), burst=burst)


def _mapping(raw: object, where: str, allowed: set[str]) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise TenantsFileError(f"{where}: expected a mapping")
    unknown = sorted(str(key) for key in raw if key not in allowed)
    if unknown:
        raise TenantsFileError(
            f"{where}: unknown key(s) {', '.join(unknown)}; expected {', '.join(sorted(allowed))}"
        )
    return raw


def _string(raw: object, where: str, env: Mapping[str, str]) -> str:
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        raw = str(raw)  # YAML reads numeric ids such as phone_number_id as numbers
    if not isinstance(raw, str):
        raise TenantsFileError(f"{where}: expected a string")

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise TenantsFileError(f"{where}: environment variable {name} is not set")
        return env[name]

    return _ENV_REFERENCE.sub(substitute, raw)
