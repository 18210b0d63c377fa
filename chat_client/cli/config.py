"""Where chatctl connects, and with which token: flags, then the environment (CHAT_ADDRESS,
CHAT_TOKEN), then a profile of ``~/.config/chatctl/config.toml``, then the defaults of
``make run``."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chat_client.cli.exits import USAGE, CommandError

DEFAULT_ADDRESS = "127.0.0.1:8001"


@dataclass(frozen=True, slots=True)
class Connection:
    """An address (``host:port``, or ``https://host:port`` for TLS) and a bearer token."""

    address: str
    token: str
    profile: str = ""


def config_path(environ: Mapping[str, str]) -> Path:
    """``$XDG_CONFIG_HOME/chatctl/config.toml``, by default ``~/.config/chatctl/config.toml``."""
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "chatctl" / "config.toml"


def load_profiles(path: Path) -> tuple[str, dict[str, dict[str, Any]]]:
    """The file's default profile name and its profiles (none when the file does not exist)."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "", {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CommandError(f"cannot read {path}: {exc}", code=USAGE) from None
    profiles = document.get("profiles", {})
    if not isinstance(profiles, dict) or not all(isinstance(p, dict) for p in profiles.values()):
        raise CommandError(f"{path}: [profiles.NAME] tables expected", code=USAGE)
    default = document.get("default", "")
    return str(default), profiles


def resolve(
    *,
    address: str | None,
    token: str | None,
    profile: str | None,
    path: Path,
    environ: Mapping[str, str],
) -> Connection:
    """The connection the flags, environment and profile file describe together.

    A profile holds ``address`` and one of ``token``, ``token_env`` (a variable to read it
    from) or ``token_file``.
    """
    default, profiles = load_profiles(path)
    name = profile or default
    chosen: dict[str, Any] = {}
    if name:
        if name not in profiles:
            known = ", ".join(sorted(profiles)) or "none"
            raise CommandError(f"no profile {name!r} in {path} (profiles: {known})", code=USAGE)
        chosen = profiles[name]
    return Connection(
        address=address or environ.get("CHAT_ADDRESS") or chosen.get("address") or DEFAULT_ADDRESS,
        token=token or environ.get("CHAT_TOKEN") or _profile_token(name, chosen, environ),
        profile=name,
    )


def _profile_token(name: str, profile: Mapping[str, Any], environ: Mapping[str, str]) -> str:
    if "token" in profile:
        return str(profile["token"])
    if "token_env" in profile:
        variable = str(profile["token_env"])
        value = environ.get(variable, "")
        if not value:
            raise CommandError(
                f"profile {name!r} reads its token from ${variable}, which is not set"
            )
        return value
    if "token_file" in profile:
        token_file = Path(str(profile["token_file"])).expanduser()
        try:
            return token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise CommandError(f"profile {name!r}: cannot read its token file: {exc}") from None
    return ""
