"""The platform users a person can chat as on the page: two per platform, each with the ids
that platform gives a user and the address the bot answers to."""

from __future__ import annotations

from dataclasses import dataclass

PLATFORMS = ("whatsapp", "messenger", "slack", "teams")
LABELS = {"whatsapp": "WhatsApp", "messenger": "Messenger", "slack": "Slack", "teams": "Teams"}


@dataclass(frozen=True, slots=True)
class Persona:
    key: str
    name: str
    #: The user's id on the platform (WhatsApp number, page-scoped id, Slack or Teams user).
    user_id: str
    #: Where the bot's answer goes: the number or PSID itself, a Slack DM channel, a Teams
    #: personal conversation.
    address: str


PERSONAS: dict[str, tuple[Persona, ...]] = {
    "whatsapp": (
        Persona("ana", "Ana Silva", "15550100001", "15550100001"),
        Persona("ben", "Ben Okafor", "15550100002", "15550100002"),
    ),
    "messenger": (
        Persona("ana", "Ana Silva", "7100000000000001", "7100000000000001"),
        Persona("ben", "Ben Okafor", "7100000000000002", "7100000000000002"),
    ),
    "slack": (
        Persona("ana", "Ana Silva", "U0SBXANA01", "D0SBXANA01"),
        Persona("ben", "Ben Okafor", "U0SBXBEN02", "D0SBXBEN02"),
    ),
    "teams": (
        Persona("ana", "Ana Silva", "29:sandbox-ana", "a:sandbox-ana"),
        Persona("ben", "Ben Okafor", "29:sandbox-ben", "a:sandbox-ben"),
    ),
}


def persona(platform: str, key: str) -> Persona:
    """The persona, or ValueError naming the choices."""
    for candidate in PERSONAS.get(platform, ()):
        if candidate.key == key:
            return candidate
    known = ", ".join(f"{p}/{c.key}" for p in PERSONAS for c in PERSONAS[p])
    raise ValueError(f"unknown user {platform}/{key}: one of {known}")
