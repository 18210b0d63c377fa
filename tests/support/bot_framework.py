"""Bot Framework's OpenID metadata and signing keys for the Teams tests: the platform
sandbox's (devstack/sandbox/signing.py), the same the dev bridge trusts under `make run`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from devstack.sandbox import Sandbox
from devstack.sandbox.signing import BotFrameworkKeys

TEAMS_APP = "11111111-2222-3333-4444-555555555555"
SERVICE_URL = "https://smba.trafficmanager.net/amer/"


@dataclass
class TeamsKeys:
    key: BotFrameworkKeys
    metadata_url: str

    @property
    def fetches(self) -> int:
        return self.key.fetches

    def token(self, **claims: Any) -> str:
        """A token for the test tenants' bot and SERVICE_URL, with ``claims`` replacing (None:
        leaving out) the defaults."""
        return self.key.token(app_id=TEAMS_APP, service_url=SERVICE_URL, **claims)


def no_defaults() -> dict[str, Any]:
    # KeyPair.sign adds the chat-service claims; the Bot Framework token has none of them.
    return {"iss": None, "aud": None, "sub": None, "tenant_id": None, "scope": None, "iat": None}


@pytest.fixture
def teams_keys(platforms: Sandbox) -> TeamsKeys:
    """The sandbox's Bot Framework keys (with the msteams endorsement) and its metadata URL."""
    return TeamsKeys(platforms.keys, platforms.metadata_url)
