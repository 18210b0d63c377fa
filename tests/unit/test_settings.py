from __future__ import annotations

from pathlib import Path

import pytest

from server.settings import Settings, SettingsError
from server.workers import worker_settings


def test_defaults_match_the_readme() -> None:
    settings = Settings.from_env({})
    assert settings.grpc_address == "0.0.0.0:8001"
    assert settings.workers == 1
    assert settings.mongodb_database == "chat"
    assert settings.tenants_file is None
    assert settings.redis_cluster is False
    assert settings.log_format == "auto"
    assert settings.jwt.algorithms == ("RS256", "ES256")
    assert settings.platforms.slack_api_base == "https://slack.com"
    assert settings.platforms.teams_token_url.startswith("https://login.microsoftonline.com/")


def test_values_are_read_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "CHAT_GRPC_ADDRESS": "127.0.0.1:9001",
            "CHAT_MONGODB_URI": "mongodb://db:27017",
            "CHAT_REDIS_URL": "redis://cache:6379/2",
            "CHAT_REDIS_CLUSTER": "true",
            "CHAT_KAFKA_BOOTSTRAP": "kafka:9092",
            "CHAT_TENANTS_FILE": "/etc/chat/tenants.yaml",
            "CHAT_LOG_FORMAT": "JSON",
            "CHAT_SHUTDOWN_GRACE_SECONDS": "2.5",
            "CHAT_JWT_LEEWAY_SECONDS": "5",
            "CHAT_SLACK_API_BASE": "http://127.0.0.1:9999",
        }
    )
    assert settings.grpc_address == "127.0.0.1:9001"
    assert settings.mongodb_uri == "mongodb://db:27017"
    assert settings.redis_url == "redis://cache:6379/2"
    assert settings.redis_cluster is True
    assert settings.kafka_bootstrap == "kafka:9092"
    assert settings.tenants_file == Path("/etc/chat/tenants.yaml")
    assert settings.log_format == "json"
    assert settings.shutdown_grace_seconds == 2.5
    assert settings.jwt.leeway_seconds == 5
    assert settings.platforms.slack_api_base == "http://127.0.0.1:9999"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CHAT_LOG_FORMAT", "xml"),
        ("CHAT_LOG_LEVEL", "loud"),
        ("CHAT_SHUTDOWN_GRACE_SECONDS", "-1"),
        ("CHAT_SHUTDOWN_GRACE_SECONDS", "soon"),
        ("CHAT_JWT_LEEWAY_SECONDS", "-3"),
        ("CHAT_JWT_ALGORITHMS", "none"),
        ("CHAT_WORKERS", "0"),
        ("CHAT_WORKERS", "65"),
        ("CHAT_WORKERS", "many"),
        ("CHAT_REDIS_CLUSTER", "sometimes"),
    ],
)
def test_a_bad_value_is_an_error_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_workers_share_a_named_port_and_serve_metrics_one_port_apart() -> None:
    with pytest.raises(SettingsError, match="CHAT_WORKERS"):
        Settings.from_env({"CHAT_WORKERS": "2", "CHAT_GRPC_ADDRESS": "127.0.0.1:0"})
    settings = Settings.from_env({"CHAT_WORKERS": "3", "CHAT_METRICS_ADDRESS": "[::]:9464"})
    assert settings.workers == 3
    assert worker_settings(settings, 0).metrics_address == "[::]:9464"
    assert worker_settings(settings, 2).metrics_address == "[::]:9466"
    assert worker_settings(settings, 2).grpc_address == settings.grpc_address
    anywhere = Settings.from_env({"CHAT_WORKERS": "2", "CHAT_METRICS_ADDRESS": "127.0.0.1:0"})
    assert worker_settings(anywhere, 1).metrics_address == "127.0.0.1:0"
    off = Settings.from_env({"CHAT_WORKERS": "2", "CHAT_METRICS_ADDRESS": "off"})
    assert worker_settings(off, 1).metrics_address is None


def test_hs256_is_used_only_with_a_secret_and_no_key_source() -> None:
    assert Settings.from_env({"CHAT_JWT_SECRET": "s"}).jwt.algorithms == ("HS256",)
    with_keys = Settings.from_env(
        {"CHAT_JWT_SECRET": "s", "CHAT_JWT_JWKS_URL": "https://idp.example/jwks.json"}
    )
    assert "HS256" not in with_keys.jwt.algorithms
    listed = Settings.from_env(
        {
            "CHAT_JWT_SECRET": "s",
            "CHAT_JWT_PUBLIC_KEY_FILE": "/keys/pub.pem",
            "CHAT_JWT_ALGORITHMS": "RS256,HS256",
        }
    )
    assert listed.jwt.algorithms == ("RS256", "HS256")


def test_hs256_without_a_secret_is_refused() -> None:
    with pytest.raises(SettingsError, match="CHAT_JWT_SECRET"):
        Settings.from_env({"CHAT_JWT_ALGORITHMS": "HS256"})
