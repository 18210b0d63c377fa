"""One typed exception for every failed call, read from the ``google.rpc.Status`` details."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import cast

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid field of a request: its path and what it accepts."""

    field: str
    description: str


@dataclass(frozen=True, slots=True)
class QuotaViolation:
    """One limit a call went over."""

    subject: str
    description: str


@dataclass(eq=False)
class ChatError(Exception):
    """A failed call: the gRPC code, the server's stable ``reason`` (branch on it, not on the
    message), field violations, the delay the server asks before a retry, and the request id
    to quote when reporting the failure."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    field_violations: tuple[FieldViolation, ...] = ()
    quota_violations: tuple[QuotaViolation, ...] = ()
    retry_delay: float | None = None
    request_id: str = ""

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @property
    def code_name(self) -> str:
        """The code as the API documents it, e.g. ``NOT_FOUND``."""
        return str(self.code.name)

    def __str__(self) -> str:
        """One line: code, reason, message, field violations and request id."""
        head = self.code_name + (f" ({self.reason})" if self.reason else "")
        text = f"{head}: {self.message}" if self.message else head
        if self.field_violations:
            text += "; " + "; ".join(f"{v.field}: {v.description}" for v in self.field_violations)
        if self.request_id:
            text += f" [request id {self.request_id}]"
        return " ".join(text.split())

    @classmethod
    def from_rpc_error(cls, error: grpc.aio.AioRpcError, *, request_id: str = "") -> ChatError:
        """The error a failed call's status and trailers describe; ``request_id`` is the one
        sent, used when the server's ErrorInfo does not quote one."""
        # grpc.aio's Metadata iterates as (key, value) pairs; the stubs do not say so.
        trailers = cast(Iterable[tuple[str, str | bytes]], error.trailing_metadata() or ())
        raw = next(
            (value for key, value in trailers if key == _DETAILS_KEY and isinstance(value, bytes)),
            None,
        )
        return from_status_details(error.code(), error.details() or "", raw, request_id=request_id)


def from_status_details(
    code: grpc.StatusCode, message: str, raw: bytes | None, *, request_id: str = ""
) -> ChatError:
    """A ChatError from the raw ``grpc-status-details-bin`` bytes (None: no details)."""
    status = status_pb2.Status()
    if raw:
        try:
            status.ParseFromString(raw)
        except DecodeError:
            status.Clear()
    info = error_details_pb2.ErrorInfo()
    bad = error_details_pb2.BadRequest()
    quota = error_details_pb2.QuotaFailure()
    retry = error_details_pb2.RetryInfo()
    for detail in status.details:
        for kind in (info, bad, quota, retry):
            if detail.Is(kind.DESCRIPTOR):
                detail.Unpack(kind)
    delay = None
    if retry.HasField("retry_delay"):
        delay = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
    return ChatError(
        code=code,
        message=status.message or message,
        reason=info.reason,
        domain=info.domain,
        metadata=dict(info.metadata),
        field_violations=tuple(
            FieldViolation(v.field, v.description) for v in bad.field_violations
        ),
        quota_violations=tuple(QuotaViolation(v.subject, v.description) for v in quota.violations),
        retry_delay=delay,
        request_id=info.metadata.get("request_id") or request_id,
    )
