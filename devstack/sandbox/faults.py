"""Answers other than success: the page's fault buttons (the next send of one platform gets a
rate limit, a server error, a timeout or a permanent refusal) and the tests' scripts."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

RATE_LIMIT = "rate_limit"
SERVER_ERROR = "server_error"
TIMEOUT = "timeout"
PERMANENT = "permanent"
KINDS = (RATE_LIMIT, SERVER_ERROR, TIMEOUT, PERMANENT)

#: Each platform's own words for a refusal: (HTTP status, body). Slack answers its errors with
#: 200 and ``ok: false``; the others with an HTTP error and an error object. Meta reports its
#: throttling as a Graph error with a 400 and no Retry-After (the fixture
#: whatsapp/outbound/error_response_130429_rate_limit.json); Slack and Teams with a 429 and one.
_REFUSALS: dict[str, dict[str, tuple[int, dict[str, Any]]]] = {
    "whatsapp": {
        RATE_LIMIT: (
            400,
            {
                "error": {
                    "message": "(#130429) Rate limit hit",
                    "type": "OAuthException",
                    "code": 130429,
                    "error_data": {
                        "messaging_product": "whatsapp",
                        "details": "Cloud API message throughput has been reached.",
                    },
                    "error_subcode": 2494055,
                    "fbtrace_id": "SANDBOX",
                }
            },
        ),
        SERVER_ERROR: (503, {"error": {"message": "Service unavailable", "code": 2}}),
    },
    "messenger": {
        RATE_LIMIT: (
            400,
            {
                "error": {
                    "message": "(#613) Calls to this api have exceeded the rate limit.",
                    "type": "OAuthException",
                    "code": 613,
                    "fbtrace_id": "SANDBOX",
                }
            },
        ),
        SERVER_ERROR: (503, {"error": {"message": "Service unavailable", "code": 2}}),
        PERMANENT: (
            400,
            {"error": {"message": "No matching user found", "code": 100, "error_subcode": 2018001}},
        ),
    },
    "slack": {
        RATE_LIMIT: (429, {"ok": False, "error": "ratelimited"}),
        SERVER_ERROR: (503, {"ok": False, "error": "service_unavailable"}),
        PERMANENT: (200, {"ok": False, "error": "channel_not_found"}),
    },
    "teams": {
        RATE_LIMIT: (429, {"error": {"code": "Throttled", "message": "Too many requests"}}),
        SERVER_ERROR: (502, {"error": {"code": "ServiceError", "message": "Bad gateway"}}),
        PERMANENT: (
            403,
            {
                "error": {
                    "code": "BotNotInConversationRoster",
                    "message": "The bot is not part of the conversation roster.",
                }
            },
        ),
    },
}
#: Faults a platform reports after accepting the send: WhatsApp answers 131026 (undeliverable)
#: with a 200 and then a ``failed`` status webhook carrying the error.
LATER: dict[str, dict[str, dict[str, Any]]] = {
    "whatsapp": {
        PERMANENT: {
            "code": 131026,
            "title": "Message undeliverable",
            "message": "Message undeliverable",
            "error_data": {"details": "Message Undeliverable."},
        }
    }
}
#: Which refusals carry a Retry-After (Slack's and Teams' 429s).
_RETRY_AFTER = {"slack", "teams"}


@dataclass
class Faults:
    """What the next answers are, when not success."""

    #: Per platform, the fault the next message send gets (armed on the page, used once).
    armed: dict[str, str] = field(default_factory=dict)
    #: A timed-out send is answered (504) after this long: past the service's send timeout.
    timeout_seconds: float = 15.0
    retry_after_seconds: int = 2
    #: Tests: recipients whose next WhatsApp send is left unanswered until ``release`` is set.
    stall: set[str] = field(default_factory=set)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    #: Tests: scripted answers per recipient (status, body, headers), used in order; when none
    #: is left, the API succeeds. Per recipient, since earlier tests' deliveries may arrive too.
    script: dict[str, list[tuple[int, dict[str, Any], dict[str, str]]]] = field(
        default_factory=dict
    )
    #: Per platform, the error of the send just accepted that the platform reports later.
    later: dict[str, dict[str, Any]] = field(default_factory=dict)

    def arm(self, platform: str, kind: str) -> None:
        """Give the next send of ``platform`` this fault ("" disarms)."""
        if kind not in (*KINDS, ""):
            raise ValueError(f"unknown fault {kind!r}: one of {', '.join(KINDS)}")
        if platform not in _REFUSALS:  # every platform has one (LATER's are WhatsApp's too)
            raise ValueError(f"unknown platform {platform!r}")
        if kind:
            self.armed[platform] = kind
        else:
            self.armed.pop(platform, None)

    async def answer(
        self, platform: str, recipient: str, success: dict[str, Any], *, send: bool = True
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """(status, body, headers) for one call; ``send``: a message, which a fault may take."""
        if recipient in self.stall:
            self.stall.discard(recipient)
            await self.release.wait()  # the platform has it; the answer comes late
        scripted = self.script.get(recipient)
        if scripted:
            return scripted.pop(0)
        kind = self.armed.pop(platform, "") if send else ""
        if kind == TIMEOUT:
            # Until the service has given up (or the sandbox stops: ``release`` is set then).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.release.wait(), self.timeout_seconds)
            return 504, {"error": {"message": "gateway timeout (sandbox fault)"}}, {}
        if kind in LATER.get(platform, {}):
            self.later[platform] = LATER[platform][kind]  # the send succeeds, then fails
            return 200, success, {}
        if kind:
            status, body = _REFUSALS[platform][kind]
            limited = kind == RATE_LIMIT and platform in _RETRY_AFTER
            headers = {"Retry-After": str(self.retry_after_seconds)} if limited else {}
            return status, body, headers
        return 200, success, {}

    def failure_after(self, platform: str) -> dict[str, Any] | None:
        """The error the platform reports after accepting this send (taken once), if any."""
        return self.later.pop(platform, None)


def respond(answer: tuple[int, dict[str, Any], dict[str, str]]) -> web.Response:
    status, body, headers = answer
    return web.json_response(body, status=status, headers=headers)
