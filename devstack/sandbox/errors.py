"""A request the platform would refuse, answered in that platform's own words: Graph's error
object with a 400, Slack's ``ok: false`` with a 200, Bot Framework's error with a 400. A
handler raises ``Refused``; the panel's middleware answers and records it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")
#: The API names the handlers record under, by the platform whose error format they answer in.
_FORMAT = {"whatsapp": "meta", "messenger": "meta", "graph": "meta", "slack": "slack"}


class Refused(Exception):  # noqa: N818 - a refusal, not an error of the sandbox's
    """The platform's refusal of one request: ``reason`` in its error format."""

    def __init__(
        self,
        api: str,
        reason: str,
        *,
        slack_error: str = "invalid_arguments",
        code: int = 100,
        status: int = 400,
    ) -> None:
        super().__init__(reason)
        self.api = api
        self.reason = reason
        self.slack_error = slack_error
        self.code = code
        #: Graph's and Bot Framework's HTTP status (a missing or wrong token is a 401).
        self.status = status

    @property
    def platform(self) -> str:
        return self.api.split("-", maxsplit=1)[0]

    def response(self) -> web.Response:
        kind = _FORMAT.get(self.platform, "botframework")
        if kind == "meta":
            error = {"message": f"(#{self.code}) {self.reason}", "type": "OAuthException"}
            return web.json_response({"error": {**error, "code": self.code}}, status=self.status)
        if kind == "slack":
            # Slack answers a refused call with 200 and says why in ``error``.
            return web.json_response({"ok": False, "error": self.slack_error})
        code = "BadArgument" if self.status == 400 else "Unauthorized"
        return web.json_response(
            {"error": {"code": code, "message": self.reason}}, status=self.status
        )


def checked(api: str, read: Callable[[], T], what: str, *, slack_error: str = "") -> T:
    """``read()`` of a body whose shape the platform checks: a missing or mistyped field is
    the platform's refusal naming ``what``, not the sandbox's failure."""
    try:
        return read()
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as exc:
        raise Refused(
            api, f"{what} is malformed ({exc})", slack_error=slack_error or "invalid_arguments"
        ) from None


def an_object(api: str, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise Refused(api, "the body is not a JSON object", slack_error="invalid_arguments")
    return body
