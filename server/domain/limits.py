"""Rate limits: what a request counts against, and the verdict."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit a request counts against."""

    key: str
    per_second: float
    burst: int
    subject: str


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a request may pass; when not, how long to wait and which limits refused."""

    allowed: bool
    retry_after_seconds: float = 0.0
    refused: tuple[Limit, ...] = ()


def limit_key(tenant_id: str, kind: str, name: str = "") -> str:
    """``rl:{tenant}:kind[:name]``: the braces keep a tenant's keys in one Redis Cluster slot,
    so one script can touch them all. Long names are hashed to bound the key size."""
    if len(name) > 64:
        name = hashlib.sha256(name.encode()).hexdigest()
    return f"rl:{{{tenant_id}}}:{kind}" + (f":{name}" if name else "")
