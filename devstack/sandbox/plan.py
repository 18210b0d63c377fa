"""Which platforms `make run` points at the sandbox: each one whose API base the user has not
set and for which no tenant in the tenants file has credentials other than the example file's
placeholders. The API bases are the whole service's: a platform played for the dev tenant is
played for every tenant, so one tenant with real credentials keeps the platform real."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from devstack.sandbox.personas import PLATFORMS
from server.domain.tenant import Tenant
from server.repositories.tenants_file import TenantsFileError, load_tenants

EXAMPLE_TENANTS = Path(__file__).resolve().parents[2] / "config" / "tenants.example.yaml"
#: The settings that name a platform's real API; any of them set keeps the platform real.
API_SETTINGS = {
    "whatsapp": ("CHAT_WHATSAPP_API_BASE",),
    "messenger": ("CHAT_MESSENGER_API_BASE",),
    "slack": ("CHAT_SLACK_API_BASE",),
    "teams": ("CHAT_TEAMS_TOKEN_URL", "CHAT_TEAMS_OPENID_METADATA_URL"),
}
_OFF = ("0", "false", "no", "off")


@dataclass(frozen=True, slots=True)
class SandboxPlan:
    """The platforms the sandbox plays, and why each other one is left real."""

    platforms: tuple[str, ...]
    real: dict[str, str] = field(default_factory=dict)

    def service_env(self, base: str) -> dict[str, str]:
        """The settings that point the service (server, worker, bridge) at the sandbox."""
        env: dict[str, str] = {}
        if "whatsapp" in self.platforms:
            env["CHAT_WHATSAPP_API_BASE"] = base
        if "messenger" in self.platforms:
            env["CHAT_MESSENGER_API_BASE"] = base
        if "slack" in self.platforms:
            env["CHAT_SLACK_API_BASE"] = base
        if "teams" in self.platforms:
            env["CHAT_TEAMS_TOKEN_URL"] = f"{base}/token"
            env["CHAT_TEAMS_OPENID_METADATA_URL"] = f"{base}/botframework/openid"
        if self.platforms:
            # The sandbox serves users' media from 127.0.0.1, which the media fetcher refuses
            # unless private addresses are allowed (the dev stack only).
            env["CHAT_MEDIA_FETCH_ALLOW_PRIVATE"] = "true"
        return env


def plan(environ: Mapping[str, str], tenants_file: Path, tenant_id: str) -> SandboxPlan:
    """Decide per platform; CHAT_DEV_SANDBOX=0 leaves all of them real."""
    if environ.get("CHAT_DEV_SANDBOX", "1").strip().lower() in _OFF:
        return SandboxPlan((), dict.fromkeys(PLATFORMS, "CHAT_DEV_SANDBOX=0"))
    tenants = _tenants(tenants_file, environ)
    examples = _tenants(EXAMPLE_TENANTS, {})
    # The dev tenant named first when it is one of the tenants with credentials of their own.
    order = sorted(tenants, key=lambda name: (name != tenant_id, name))
    played: list[str] = []
    real: dict[str, str] = {}
    for platform in PLATFORMS:
        given = [name for name in API_SETTINGS[platform] if environ.get(name)]
        owners = [
            name for name in order if _own_credentials(tenants[name], examples.get(name), platform)
        ]
        if given:
            real[platform] = f"{given[0]} is set"
        elif owners:
            real[platform] = f"tenant {owners[0]} has its own {platform} credentials"
        else:
            played.append(platform)
    return SandboxPlan(tuple(played), real)


def _tenants(path: Path, environ: Mapping[str, str]) -> dict[str, Tenant]:
    try:
        return dict(load_tenants(path, environ))
    except (TenantsFileError, OSError):
        return {}  # the server reports a bad tenants file; nothing to compare here


def _own_credentials(tenant: Tenant | None, example: Tenant | None, platform: str) -> bool:
    """Whether the tenant has credentials for ``platform`` other than the example's
    placeholders (none at all: nothing real to talk to, so the sandbox may play it)."""
    if tenant is None:
        return False
    config = getattr(tenant.channels, platform)
    if config is None:
        return False
    return example is None or config != getattr(example.channels, platform)
