"""The in-memory database under the fakes: shared state, and transactions that roll every
store back when the work raises, as a MongoDB transaction would."""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from chat.v1 import common_pb2, events_pb2
from server.domain.idempotency import RecordedResponse
from server.domain.queues import Delivery
from server.domain.receipts import EarlyReceipt

T = TypeVar("T")
ACTIVE = common_pb2.CONVERSATION_STATUS_ACTIVE
CLOSED = common_pb2.CONVERSATION_STATUS_CLOSED
OUTBOUND = common_pb2.MESSAGE_DIRECTION_OUTBOUND
INBOUND = common_pb2.MESSAGE_DIRECTION_INBOUND


@dataclass
class FakeTx:
    """The handle MemoryTransactions passes to its work; numbered, to tell transactions apart."""

    number: int


def need_tx(tx: Any) -> FakeTx:
    # The real writes take a session; a write outside any transaction is a service bug.
    assert isinstance(tx, FakeTx), "a transactional write was made outside a transaction"
    return tx


@dataclass
class Database:
    """Every store's state, so a transaction can restore it all when its work fails."""

    conversations: dict[str, tuple[str, common_pb2.Conversation]] = field(default_factory=dict)
    messages: dict[str, tuple[str, common_pb2.Message, str]] = field(default_factory=dict)
    outbox: list[events_pb2.EventEnvelope] = field(default_factory=list)
    idempotency: dict[tuple[str, str, str], RecordedResponse] = field(default_factory=dict)
    deliveries: dict[str, Delivery] = field(default_factory=dict)
    reply_jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    ingest_inbox: dict[str, dict[str, Any]] = field(default_factory=dict)
    ingested: set[tuple[str, int, str]] = field(default_factory=set)
    early_receipts: dict[str, EarlyReceipt] = field(default_factory=dict)
    #: (transaction number, what was written), in order: which writes shared a transaction.
    writes: list[tuple[int, str]] = field(default_factory=list)

    def snapshot(self) -> dict[str, Any]:
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def restore(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    def wrote(self, tx: Any, what: str) -> None:
        self.writes.append((need_tx(tx).number, what))


class MemoryTransactions:
    """TransactionRunner: runs work with a FakeTx; everything it wrote is undone when it
    raises. ``fail_next`` makes the next run raise that error instead of committing."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._numbers = itertools.count(1)
        self.commits = 0
        self.failures: list[BaseException] = []

    def fail_next(self, error: BaseException) -> None:
        self.failures.append(error)

    async def run(self, work: Callable[[Any], Awaitable[T]]) -> T:
        state = self._db.snapshot()
        try:
            result = await work(FakeTx(next(self._numbers)))
        except BaseException:
            self._db.restore(state)
            raise
        if self.failures:
            self._db.restore(state)
            raise self.failures.pop(0)
        self.commits += 1
        return result
