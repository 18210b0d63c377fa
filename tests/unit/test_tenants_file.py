from __future__ import annotations

from pathlib import Path

import pytest

from server.repositories.tenants_file import TenantsFileError, load_tenants
from tests.support.paths import EXAMPLE_TENANTS


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tenants.yaml"
    path.write_text(text)
    return path


def test_the_example_file_loads() -> None:
    tenants = load_tenants(EXAMPLE_TENANTS)
    acme = tenants["acme"]
    assert acme.enabled
    assert acme.quotas.requests_per_second == 50
    assert acme.quotas.burst == 100
    assert acme.channels.whatsapp is not None
    assert acme.channels.whatsapp.phone_number_id == "100000000000001"
    assert acme.channels.slack is not None
    assert acme.channels.slack.signing_secret == "dev-slack-signing-secret"
    assert tenants["globex"].channels.whatsapp is None


def test_secrets_come_from_environment_references(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "tenants:\n  - id: acme\n    channels:\n      slack: {signing_secret: '${SLACK_SECRET}',"
        " bot_token: 'xoxb-${SLACK_TOKEN_SUFFIX}'}\n",
    )
    tenants = load_tenants(path, {"SLACK_SECRET": "s3cret", "SLACK_TOKEN_SUFFIX": "123"})
    slack = tenants["acme"].channels.slack
    assert slack is not None
    assert slack.signing_secret == "s3cret"
    assert slack.bot_token == "xoxb-123"


def test_secrets_never_appear_in_repr() -> None:
    text = repr(load_tenants(EXAMPLE_TENANTS)["acme"])
    assert "dev-slack-signing-secret" not in text
    assert "dev-whatsapp-app-secret" not in text
    assert "dev-teams-app-password" not in text
    assert "100000000000001" in text  # ids are not secrets, and help when debugging


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tenants:\n  - id: acme\n    channels: {slack: {signing_secret: '${NOPE}'}}\n", "NOPE"),
        ("tenants:\n  - id: acme\n    channels: {slack: {signing_secert: x}}\n", "signing_secert"),
        ("tenants:\n  - id: acme\n    channels: {telegram: {token: x}}\n", "telegram"),
        ("tenants:\n  - id: acme\n  - id: acme\n", "duplicate tenant id"),
        ("tenants:\n  - id: 'Acme Corp'\n", r"tenants\[0\]\.id"),
        ("tenants:\n  - id: acme\n    quotas: {burst: -1}\n", "burst"),
        ("tenants:\n  - id: acme\n    enabled: 'yes please'\n", "enabled"),
        ("tenants: {acme: {}}\n", "'tenants' list"),
        ("tenants: [\n", "not valid YAML"),
    ],
)
def test_invalid_files_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(TenantsFileError, match=message):
        load_tenants(write(tmp_path, text), {})


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TenantsFileError, match="cannot read"):
        load_tenants(tmp_path / "absent.yaml")
