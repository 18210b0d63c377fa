"""Where chatctl connects: a flag over the environment over the profile over make run's
address; tokens from a profile's file or variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from chat_client.cli.config import resolve
from chat_client.cli.exits import USAGE, CommandError


@pytest.fixture
def profiles(tmp_path: Path) -> Path:
    (tmp_path / "token").write_text("from-file\n")
    path = tmp_path / "config.toml"
    path.write_text(
        'default = "dev"\n'
        f'[profiles.dev]\naddress = "dev:1"\ntoken_file = "{tmp_path / "token"}"\n'
        '[profiles.prod]\naddress = "https://prod:443"\ntoken_env = "PROD_TOKEN"\n'
    )
    return path


def test_flags_then_environment_then_profile(profiles: Path) -> None:
    env = {"CHAT_ADDRESS": "env:2", "CHAT_TOKEN": "env-token"}
    flags = resolve(address="flag:3", token="flag-token", profile=None, path=profiles, environ=env)
    assert (flags.address, flags.token) == ("flag:3", "flag-token")
    environment = resolve(address=None, token=None, profile=None, path=profiles, environ=env)
    assert (environment.address, environment.token) == ("env:2", "env-token")
    default = resolve(address=None, token=None, profile=None, path=profiles, environ={})
    assert (default.address, default.token, default.profile) == ("dev:1", "from-file", "dev")
    chosen = resolve(
        address=None, token=None, profile="prod", path=profiles, environ={"PROD_TOKEN": "p"}
    )
    assert (chosen.address, chosen.token) == ("https://prod:443", "p")


def test_without_a_profile_file_the_make_run_address_and_no_token(tmp_path: Path) -> None:
    chosen = resolve(
        address=None, token=None, profile=None, path=tmp_path / "absent.toml", environ={}
    )
    assert (chosen.address, chosen.token) == ("127.0.0.1:8001", "")


def test_a_broken_file_or_unknown_profile_is_a_usage_error(profiles: Path) -> None:
    with pytest.raises(CommandError) as caught:
        resolve(address=None, token=None, profile="staging", path=profiles, environ={})
    assert caught.value.code == USAGE
    assert "dev, prod" in str(caught.value)
    profiles.write_text("default = [unclosed\n")
    with pytest.raises(CommandError) as caught:
        resolve(address=None, token=None, profile=None, path=profiles, environ={})
    assert caught.value.code == USAGE
