"""A request's problems, collected so the caller hears of all of them at once.

Checks add to a ``Violations``; ``raise_any`` then raises one INVALID_ARGUMENT carrying every
field violation found, rather than the first, so a client fixes its request in one round.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import TypeVar

from google.protobuf.descriptor import EnumDescriptor

from server.domain.errors import FieldViolation, InvalidArgument

T = TypeVar("T")


class Violations:
    """Collects field violations; ``raise_any`` raises them together."""

    def __init__(self) -> None:
        self._found: list[FieldViolation] = []

    def __bool__(self) -> bool:
        return bool(self._found)

    def add(self, field: str, description: str) -> None:
        """``field`` is wrong, as ``description`` says."""
        self._found.append(FieldViolation(field, description))

    def extend(self, found: Iterable[FieldViolation]) -> None:
        """Violations found by another check."""
        self._found.extend(found)

    def text(self, field: str, value: str, *, limit: int, required: bool = False) -> None:
        """A string field: present when ``required``, at most ``limit`` characters."""
        if required and not value:
            self.add(field, f"required, at most {limit} characters")
        elif len(value) > limit:
            self.add(field, f"at most {limit} characters")

    def enum(
        self,
        field: str,
        value: int,
        kind: EnumDescriptor,
        *,
        required: bool = False,
        allowed: Collection[int] | None = None,
    ) -> None:
        """An enum field of type ``kind`` (``common_pb2.ChannelType.DESCRIPTOR``): unset only
        when not ``required``; else one of ``allowed`` (every value but the unspecified zero
        when not given). An unknown number is called that, not "required"."""
        known = kind.values_by_number
        choices = [v for v in known if v] if allowed is None else list(allowed)
        names = ", ".join(known[v].name for v in choices)
        if value == 0:
            if required:
                self.add(field, f"required: one of {names}")
        elif value not in known:
            self.add(field, f"unknown value {value}: one of {names}")
        elif value not in choices:
            self.add(field, f"{known[value].name} is not accepted here: one of {names}")

    def attempt(self, check: Callable[[], T], *, fallback: T) -> T:
        """``check()``; when that is INVALID_ARGUMENT, its violations are collected and
        ``fallback`` stands in until ``raise_any``."""
        try:
            return check()
        except InvalidArgument as exc:
            self._found.extend(exc.field_violations or [FieldViolation("", exc.message)])
            return fallback

    def raise_any(self, message: str = "the request is invalid") -> None:
        """INVALID_ARGUMENT with every violation collected, when there is one."""
        if self._found:
            raise InvalidArgument(message, field_violations=self._found)
