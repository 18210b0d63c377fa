"""Domain errors. Each declares its gRPC status code and an ErrorInfo reason (UPPER_SNAKE);
the error boundary turns them into ``google.rpc.Status`` with details.

The message is shown to the caller, so it never holds secrets, tokens or other tenants' data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc

ERROR_DOMAIN = "chat-service"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid request field (BadRequest detail)."""

    field: str
    description: str


@dataclass(frozen=True, slots=True)
class QuotaViolation:
    """One exceeded limit (QuotaFailure detail)."""

    subject: str
    description: str


class DomainError(Exception):
    """Base of the errors a caller is meant to see."""

    code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})


class InvalidArgument(DomainError):
    """The request is malformed; field_violations say where."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        *,
        field_violations: Sequence[FieldViolation] = (),
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.field_violations = tuple(field_violations)


class Unauthenticated(DomainError):
    """No valid credentials."""

    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(DomainError):
    """Valid credentials that do not allow this call."""

    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class NotFound(DomainError):
    """The record does not exist, or belongs to another tenant (the caller cannot tell)."""

    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(DomainError):
    """The record exists already."""

    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(DomainError):
    """The record is not in a state that allows the call."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class Aborted(DomainError):
    """A concurrent change won; the caller may read again and retry."""

    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"


class ResourceExhausted(DomainError):
    """A limit is reached; retry_after_seconds says when to try again."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self,
        message: str,
        *,
        retry_after_seconds: float,
        quota_violations: Sequence[QuotaViolation] = (),
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after_seconds = retry_after_seconds
        self.quota_violations = tuple(quota_violations)


class SessionContendedError(Aborted):
    """A session changed under every attempt to change it; the caller may retry."""

    default_reason = "SESSION_CONTENDED"


class Unavailable(DomainError):
    """A dependency is down; the call may be retried (RetryInfo says after how long)."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"
    #: What RetryInfo suggests: outages this server notices are short or are retried anyway.
    retry_after_seconds = 1.0


class Unimplemented(DomainError):
    """The RPC exists in the contract but not yet in this server."""

    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "UNIMPLEMENTED"


class StoreError(Exception):
    """A store (Redis) answered a command with an error: a bug or a misconfiguration. The
    repositories raise it in place of the driver's own errors."""


class StoreUnavailableError(StoreError):
    """A store could not be reached in time; the command may not have run."""


class SubscriberTooSlowError(Exception):
    """A live subscriber's queue overflowed: it must catch up from storage."""


class HubClosingError(Exception):
    """The server is shutting down; the subscriber should reconnect (to another process)."""


class SecretUnreadableError(ValueError):
    """A stored secret does not open under this key (another key, or a tampered value)."""
