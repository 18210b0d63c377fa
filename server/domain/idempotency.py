"""What an idempotent request leaves behind (services/idempotency.py has the recipe)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RecordedResponse:
    """A completed request's response, and the fingerprint of the request that produced it
    ("" for a record written before fingerprints were kept)."""

    response: bytes
    fingerprint: str
