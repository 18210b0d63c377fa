"""The conversations the page shows, as the platform user sees them: what they said, what
the bot answered (rendered in the platform's form) and each message's ticks."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

#: Ticks only move forward, as on the platforms.
_ORDER = {"": 0, "sent": 1, "delivered": 2, "read": 3}
#: The newest entries each chat keeps, and the chats kept (the least recently active go
#: first): ``chat-sandbox`` runs for days and the page gets every chat on each change.
MAX_ENTRIES = 100
MAX_CHATS = 50


@dataclass
class Entry:
    seq: int
    #: "user", "bot", or "note" (what the sandbox did, such as a fault it answered with).
    sender: str
    text: str
    platform_id: str = ""
    #: A bot message's structured preview (see the platform modules' ``view``).
    view: dict[str, Any] | None = None
    status: str = ""
    #: Where the page shows an image the user sent (the sandbox's own media URL).
    image: str = ""
    at: float = field(default_factory=time.time)


@dataclass
class Chats:
    """Entries per "platform:address"; ``on_change`` wakes the page."""

    on_change: Any = None
    entries: dict[str, list[Entry]] = field(default_factory=dict)
    #: (platform, platform id) -> (chat key, entry): a receipt finds its message at once.
    _by_id: dict[tuple[str, str], tuple[str, Entry]] = field(default_factory=dict)
    _seq: int = 0

    def add(self, platform: str, address: str, sender: str, text: str, **more: Any) -> Entry:
        self._seq += 1
        entry = Entry(self._seq, sender, text, **more)
        key = f"{platform}:{address}"
        chat = self.entries.pop(key, [])  # re-inserted last: the most recently active
        chat.append(entry)
        self.entries[key] = chat
        if entry.platform_id:
            self._by_id[(platform, entry.platform_id)] = (key, entry)
        for dropped in chat[:-MAX_ENTRIES]:
            self._forget(platform, dropped)
        del chat[:-MAX_ENTRIES]
        while len(self.entries) > MAX_CHATS:
            old_key = next(iter(self.entries))
            for dropped in self.entries.pop(old_key):
                self._forget(old_key.split(":", 1)[0], dropped)
        self._changed()
        return entry

    def find(self, platform: str, platform_id: str) -> tuple[str, Entry] | None:
        """The address and entry of the message with this platform id, if still kept."""
        found = self._by_id.get((platform, platform_id))
        return (found[0].split(":", 1)[1], found[1]) if found else None

    def mark(self, platform: str, platform_id: str, status: str) -> None:
        """Move the ticks of the message with this platform id (never backwards)."""
        found = self._by_id.get((platform, platform_id))
        if found is None:
            return
        entry = found[1]
        if _ORDER.get(status, 0) > _ORDER.get(entry.status, 0):
            entry.status = status
            self._changed()

    def _forget(self, platform: str, entry: Entry) -> None:
        if entry.platform_id:
            self._by_id.pop((platform, entry.platform_id), None)

    def read_by_bot(self, platform: str, address: str, platform_id: str = "") -> None:
        """The bot marked the user's messages read (all, or up to ``platform_id``)."""
        for entry in self.entries.get(f"{platform}:{address}", []):
            if entry.sender == "user" and entry.status != "read":
                entry.status = "read"
                self._changed()
            if platform_id and entry.platform_id == platform_id:
                break

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        return {key: [asdict(e) for e in entries] for key, entries in self.entries.items()}

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()
