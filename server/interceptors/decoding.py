"""Requests whose bytes are not the message they claim to be.

grpc decodes a request before any interceptor runs, and an exception there becomes UNKNOWN
with the exception's class in its message and a traceback in the log, past every boundary. So
the chain (call_chain.py) gives each method's handler a decoder that never raises: bytes that do
not decode (truncated, invalid UTF-8 in a string, nesting past the parser's limit) become an
``Undecodable`` in place of the request, which the error boundary answers as INVALID_ARGUMENT
(``MALFORMED_REQUEST``) with the request id, like any other bad request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from server.domain.errors import InvalidArgument

MALFORMED_REQUEST = "MALFORMED_REQUEST"
TOO_DEEP = "it is nested too deeply (at most 100 levels of messages)"

Decoder = Callable[[bytes], Any]


@dataclass(frozen=True, slots=True)
class Undecodable:
    """What a method receives for bytes its request type could not decode."""

    problem: str


def malformed(request: Undecodable) -> InvalidArgument:
    """The error a client gets for an undecodable request."""
    return InvalidArgument(
        f"the request could not be decoded: {request.problem}", reason=MALFORMED_REQUEST
    )


def tolerant(decode: Decoder) -> Decoder:
    """``decode``, with an ``Undecodable`` for bytes it refuses."""

    def decoded(data: bytes) -> Any:
        try:
            return decode(data)
        except RecursionError:
            return Undecodable(TOO_DEEP)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is the client's bytes
            # The decoder's own message names our classes; the client learns what matters.
            if "Depth" in str(exc):  # upb: "Exceeded upb_DecodeOptions_MaxDepth"
                return Undecodable(TOO_DEEP)
            return Undecodable("its bytes are not a valid message of this method's type")

    return decoded
