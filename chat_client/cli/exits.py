"""chatctl's exit codes, and the one-line failure every error becomes."""

from __future__ import annotations

import grpc

OK = 0
FAILED = 1
USAGE = 2
NOT_FOUND = 3
PERMISSION = 4
UNAVAILABLE = 5

#: What each code means, for the help text and docs/chatctl.md.
MEANINGS = {
    OK: "ok",
    FAILED: "failed (a call failed, a retry or a check did not pass, the audit chain is broken)",
    USAGE: "usage (a bad option or argument, or a request the server found invalid)",
    NOT_FOUND: "not found",
    PERMISSION: "permission (no token, an invalid or expired one, or a missing scope)",
    UNAVAILABLE: "unavailable (the server could not be reached or asked to be called later)",
}

_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: USAGE,
    grpc.StatusCode.NOT_FOUND: NOT_FOUND,
    grpc.StatusCode.UNAUTHENTICATED: PERMISSION,
    grpc.StatusCode.PERMISSION_DENIED: PERMISSION,
    grpc.StatusCode.UNAVAILABLE: UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED: UNAVAILABLE,
}


def exit_code(code: grpc.StatusCode) -> int:
    """The exit code of a call that failed with ``code``."""
    return _BY_CODE.get(code, FAILED)


class CommandError(Exception):
    """A failure chatctl reports as one line and an exit code."""

    def __init__(self, message: str, *, code: int = FAILED) -> None:
        super().__init__(message)
        self.code = code
