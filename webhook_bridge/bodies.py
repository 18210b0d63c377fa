"""Reading a webhook's body, and the answers to one that cannot be read or used.

Before the signature is checked, a body that cannot be read is refused with a 4xx (refuse).
After, a body that cannot be used is an UnusableBodyError: the app acknowledges it with 200,
counts it and logs it as rejected.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from typing import Any

import structlog
from aiohttp import web
from aiohttp.web import RequestPayloadError

log = structlog.get_logger("chat.bridge")

#: Deeper than any platform's payload: deeper JSON is rejected before anything walks it
#: (Python's parser itself gives up, with a RecursionError, at about a thousand levels).
MAX_JSON_DEPTH = 64
#: How long a webhook's body may take to arrive, by default.
BODY_TIMEOUT_SECONDS = 10.0


class UnusableBodyError(Exception):
    """A signed body the bridge cannot use: acknowledged with 200 (the platform would retry
    anything else, to the same end), counted and logged as rejected with its reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        #: A metrics label: one of a few fixed words.
        self.reason = reason
        self.detail = detail


def refuse(status: int, reason: str) -> web.HTTPException:
    """A refusal with its reason in a small JSON body (never a stack trace)."""
    classes: dict[int, type[web.HTTPException]] = {
        400: web.HTTPBadRequest,
        401: web.HTTPUnauthorized,
        403: web.HTTPForbidden,
        404: web.HTTPNotFound,
        408: web.HTTPRequestTimeout,
        413: web.HTTPRequestEntityTooLarge,
        503: web.HTTPServiceUnavailable,
    }
    body = json.dumps({"error": reason})
    if status == 413:
        return web.HTTPRequestEntityTooLarge(
            max_size=0, actual_size=0, text=body, content_type="application/json"
        )
    return classes[status](text=body, content_type="application/json")


async def read_body(request: web.Request, *, seconds: float) -> bytes:
    """The whole body, within ``seconds`` and the app's size limit (else a refusal)."""
    limit = request.app._client_max_size
    if request.content_length is not None and request.content_length > limit:
        raise refuse(413, f"body over {limit} bytes")
    try:
        async with asyncio.timeout(seconds):
            return await request.read()
    except TimeoutError:
        # A client trickling its body would hold a connection (and this handler) for ever.
        refusal = refuse(408, f"the body did not arrive within {seconds:g} s")
        refusal.force_close()
        raise refusal from None
    except ConnectionError:
        # The client went away mid-body: nobody is left to answer (the answer fails quietly).
        log.debug("client disconnected before its body arrived")
        refusal = refuse(400, "the connection closed before the body arrived")
        refusal.force_close()
        raise refusal from None
    except web.HTTPRequestEntityTooLarge:
        raise refuse(413, f"body over {limit} bytes") from None
    except RequestPayloadError:
        # aiohttp decompresses a gzip or deflate body as it reads it; one that is not what its
        # Content-Encoding says (or that ends early) cannot be read at all.
        encoding = request.headers.get("Content-Encoding")
        reason = f"the body is not valid {encoding} (Content-Encoding)" if encoding else ""
        refusal = refuse(400, reason or "the body could not be read")
        refusal.force_close()  # the rest of the body cannot be read: this connection is done
        raise refusal from None


def json_body(raw: bytes) -> Any:
    """A signed JSON body (UnusableBodyError when it is not JSON). Its Content-Type is not
    looked at: the header is not signed, and a proxy that rewrites it must not make the bridge
    acknowledge good events without storing them."""
    return decode_json(raw)


def decode_json(raw: bytes | str) -> Any:
    """JSON no deeper than MAX_JSON_DEPTH (UnusableBodyError otherwise)."""
    try:
        payload = json.loads(raw)
    except RecursionError:
        raise UnusableBodyError("too-deep", "JSON nested too deep to parse") from None
    except ValueError:  # UnicodeDecodeError too; and integers of over 4300 digits
        raise UnusableBodyError("malformed-json", "malformed JSON") from None
    if _deeper_than(payload, MAX_JSON_DEPTH):
        raise UnusableBodyError("too-deep", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return payload


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest deeper than ``limit`` (walked without recursion)."""
    pending = [(value, 1)] if isinstance(value, dict | list) else []
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            return True
        pending += [(child, depth + 1) for child in children if isinstance(child, dict | list)]
    return False


def form_payload(request: web.Request, raw: bytes) -> Any:
    """The JSON in the ``payload`` field of a signed form (Slack interactivity)."""
    if request.content_type != "application/x-www-form-urlencoded":
        raise UnusableBodyError("content-type", "expected application/x-www-form-urlencoded")
    try:
        form = urllib.parse.parse_qs(raw.decode(), strict_parsing=True)
        field = form["payload"][0]
    except (ValueError, KeyError):  # UnicodeDecodeError is a ValueError
        raise UnusableBodyError("malformed-form", "expected a payload field") from None
    return decode_json(field)
