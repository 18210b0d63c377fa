"""The base of the steps that check a caller: authentication, tenant, rate limit."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import grpc


class CallerCheck(ABC):
    """A step that checks the caller of every method but the public ones (health,
    reflection); the chain (call_chain.py) runs it before the servicer, and leaves it out of a
    public method's calls."""

    @abstractmethod
    async def check(self, context: grpc.aio.ServicerContext[Any, Any], method_name: str) -> None:
        """Raise a DomainError to refuse the call."""
