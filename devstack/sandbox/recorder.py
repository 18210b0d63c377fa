"""Every request both ways: the service's calls to the platforms' APIs (kept whole, for the
tests' assertions) and the webhooks the sandbox posts to the bridge (for the page's panel)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

#: (api and path, headers, body) of one call to a platform's API.
Request = tuple[str, dict[str, str], Any]
#: Exchanges the page shows (the newest); the tests' ``requests`` are all kept.
PANEL_SIZE = 200
#: Headers the panel leaves out: credentials are the service's, not for display.
HIDDEN_HEADERS = frozenset({"authorization"})
#: Fields of a body or an answer the panel shows as ``HIDDEN``: the Teams token request's
#: secret and the tokens it is answered with (any depth; a form's fields too).
HIDDEN_FIELDS = frozenset({"client_secret", "access_token", "token", "app_password"})
HIDDEN = "(hidden)"


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request and its answer, as the panel shows it."""

    seq: int
    at: float
    #: "to platform": the service called the API; "to bridge": the sandbox sent a webhook.
    direction: str
    platform: str
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    status: int
    answer: Any


def redacted(value: Any) -> Any:
    """``value`` with every credential field's value replaced by ``HIDDEN``."""
    if isinstance(value, dict):
        return {
            k: HIDDEN if str(k).lower() in HIDDEN_FIELDS else redacted(v) for k, v in value.items()
        }
    if isinstance(value, list):
        return [redacted(v) for v in value]
    return value


def is_action(body: Any) -> bool:
    """A typing indicator or read receipt rather than a message."""
    return isinstance(body, dict) and (
        "sender_action" in body or body.get("status") == "read" or body.get("type") == "typing"
    )


@dataclass
class Recorder:
    """The record, and a version that wakes the page's long poll when anything changes."""

    requests: list[Request] = field(default_factory=list)
    #: When each request arrived (time.monotonic()), by its index in ``requests``.
    times: list[float] = field(default_factory=list)
    exchanges: deque[Exchange] = field(default_factory=lambda: deque(maxlen=PANEL_SIZE))
    #: None keeps every request (a test's sandbox lives for one test); ``chat-sandbox``, which
    #: runs for days, keeps the newest this many.
    max_requests: int | None = None
    version: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def request(self, api: str, path: str, headers: dict[str, str], body: Any) -> None:
        self.requests.append((f"{api} {path}", headers, body))
        self.times.append(time.monotonic())
        if self.max_requests is not None and len(self.requests) > self.max_requests:
            del self.requests[: -self.max_requests], self.times[: -self.max_requests]
        self.touch()

    def exchange(
        self,
        *,
        direction: str,
        platform: str,
        method: str,
        path: str,
        headers: dict[str, str],
        body: Any,
        status: int,
        answer: Any,
    ) -> None:
        shown = {k: v for k, v in headers.items() if k.lower() not in HIDDEN_HEADERS}
        self.exchanges.append(
            Exchange(
                self.version + 1,
                time.time(),
                direction,
                platform,
                method,
                path,
                shown,
                redacted(body),
                status,
                redacted(answer),
            )
        )
        self.touch()

    def touch(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed_after(self, version: int, seconds: float) -> None:
        """Return once the version passes ``version``, or after ``seconds``."""
        if self.version > version:
            return
        try:
            await asyncio.wait_for(self._changed.wait(), seconds)
        except TimeoutError:
            return

    def panel(self, after: int = 0) -> list[dict[str, Any]]:
        return [asdict(e) for e in self.exchanges if e.seq > after]

    # What the tests ask of the record.

    def sent(self, api: str) -> list[Request]:
        return [r for r in self.requests if r[0].startswith(api)]

    def to(self, api: str, recipient: str) -> list[Request]:
        """The messages sent to one recipient (the queue is shared: earlier tests' deliveries
        may still arrive here, for their own recipients); sender actions left out."""
        return [r for r in self.requests_to(api, recipient) if not is_action(r[2])]

    def actions_to(self, api: str, recipient: str) -> list[Any]:
        """The sender actions (typing, read) about one recipient or message, in order."""
        return [r[2] for r in self.requests_to(api, recipient) if is_action(r[2])]

    def times_to(self, api: str, recipient: str) -> list[float]:
        """When each message to one recipient arrived (time.monotonic()), in order."""
        return [
            at
            for request, at in zip(self.requests, self.times, strict=True)
            if request[0].startswith(api)
            and not is_action(request[2])
            and (recipient in json.dumps(request[2]) or recipient in request[0])
        ]

    def requests_to(self, api: str, recipient: str) -> list[Request]:
        return [r for r in self.sent(api) if recipient in json.dumps(r[2]) or recipient in r[0]]
