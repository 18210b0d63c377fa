"""The bridge's settings: its time limits and its calls at once."""

from __future__ import annotations

import pytest

from server.settings import SettingsError
from webhook_bridge.bodies import BODY_TIMEOUT_SECONDS
from webhook_bridge.forwarder import CALLS_AT_ONCE
from webhook_bridge.http_server import HEADER_TIMEOUT_SECONDS
from webhook_bridge.settings import BridgeSettings

BASE = {"CHAT_JWT_SECRET": "a-development-secret-of-32-bytes!"}


def test_time_limits_default_and_parse() -> None:
    settings = BridgeSettings.from_env(BASE)
    assert settings.header_timeout_seconds == HEADER_TIMEOUT_SECONDS
    assert settings.body_timeout_seconds == BODY_TIMEOUT_SECONDS
    settings = BridgeSettings.from_env(
        {
            **BASE,
            "CHAT_BRIDGE_HEADER_TIMEOUT_SECONDS": "2.5",
            "CHAT_BRIDGE_BODY_TIMEOUT_SECONDS": " 30 ",
        }
    )
    assert (settings.header_timeout_seconds, settings.body_timeout_seconds) == (2.5, 30.0)


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "3601", "ten"])
@pytest.mark.parametrize(
    "name", ["CHAT_BRIDGE_HEADER_TIMEOUT_SECONDS", "CHAT_BRIDGE_BODY_TIMEOUT_SECONDS"]
)
def test_time_limits_out_of_range_are_refused(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        BridgeSettings.from_env({**BASE, name: value})


def test_calls_at_once_defaults_and_parses() -> None:
    assert BridgeSettings.from_env(BASE).calls_at_once == CALLS_AT_ONCE
    assert BridgeSettings.from_env({**BASE, "CHAT_BRIDGE_CALLS_AT_ONCE": " 1 "}).calls_at_once == 1


@pytest.mark.parametrize("value", ["0", "-1", "65", "2.5", "four", "\u00b2"])
def test_calls_at_once_out_of_range_is_refused(value: str) -> None:
    with pytest.raises(SettingsError, match=r"CHAT_BRIDGE_CALLS_AT_ONCE.*1 to 64"):
        BridgeSettings.from_env({**BASE, "CHAT_BRIDGE_CALLS_AT_ONCE": value})


@pytest.mark.parametrize("value", ["1023", "-1", "1e6", "\u00b2", "lots"])
def test_a_body_limit_that_is_no_number_of_bytes_is_refused(value: str) -> None:
    with pytest.raises(SettingsError, match=r"CHAT_BRIDGE_MAX_BODY_BYTES.*at least 1024"):
        BridgeSettings.from_env({**BASE, "CHAT_BRIDGE_MAX_BODY_BYTES": value})
