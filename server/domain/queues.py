"""The durable queues' records: deliveries to the platforms and reply jobs.

Both queues live in MongoDB beside the data they serve (see repositories/deliveries.py and
repositories/ingest.py); these are the rows their workers claim and the commands they write.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from chat.v1 import common_pb2

#: A delivery's states. SENDING is a lease: a lapsed one makes the delivery due again.
QUEUED = "queued"
SENDING = "sending"
SENT = "sent"
FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Due:
    """An item found due in a queue, to be claimed: its tenant and id (a claim names both, so
    a sharded store routes it to the tenant's shard)."""

    tenant_id: str
    id: str


@dataclass(frozen=True, slots=True)
class Position:
    """Where a queued item stands in its conversation's order: items of one conversation are
    handled by sequence, so an item waits while one before it waits."""

    tenant_id: str
    conversation_id: str
    sequence: int


@dataclass(frozen=True, slots=True)
class Waiting:
    """The earliest delivery still waiting before a position: being sent now, or due then."""

    sending: bool
    due_time: dt.datetime | None


def earlier_clears(
    first: Waiting | None, *, now: dt.datetime, soon: dt.timedelta
) -> dt.datetime | None:
    """When to look again at a delivery behind ``first`` (None: nothing holds it): when the
    earlier one is due (a retry's backoff, a rate limit), or ``soon`` when it is due now or
    being sent. The earliest one counts: every later one waits for it too."""
    if first is None:
        return None
    if first.sending or first.due_time is None:
        return now + soon
    return max(now + soon, first.due_time)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try at sending a delivery."""

    time: dt.datetime
    success: bool
    platform_message_id: str = ""
    error: common_pb2.PlatformError | None = None


@dataclass(frozen=True, slots=True)
class ReportedFailure:
    """A platform's report (a status webhook) that a message it had accepted failed after
    all: WhatsApp's 131026, say, arrives so."""

    message_id: str
    time: dt.datetime
    error: common_pb2.PlatformError | None


@dataclass(frozen=True, slots=True)
class Delivery:
    """One outbound message on its way to a platform, keyed by the message id."""

    id: str
    tenant_id: str
    conversation_id: str
    sequence: int
    channel: common_pb2.ChannelType.ValueType
    recipient_id: str
    #: Teams: where the message is posted (from the conversation, never from a request).
    service_url: str
    state: str
    attempts: tuple[Attempt, ...]
    create_time: dt.datetime
    update_time: dt.datetime
    #: When it is next due; while SENDING, when the lease lapses.
    due_time: dt.datetime | None = None
    #: The process holding the lease ("" when none does).
    owner: str = ""
    #: RetryDelivery gives a fresh attempt budget: attempts before this index do not count.
    budget_start: int = 0
    #: Parts of a split message the platform already has (not sent again), and the first
    #: part's platform id, which names the message.
    parts_sent: int = 0
    first_platform_id: str = ""
    platform_message_id: str = ""
    #: The trace of the call that queued it (a W3C traceparent; "" when not traced).
    trace: str = ""
    #: The message, as committed with the delivery: known to the process that queued the
    #: delivery and handed it over (None: read it).
    message: common_pb2.Message | None = field(default=None, compare=False, repr=False)

    @property
    def budget_used(self) -> int:
        """Attempts made since the budget last started."""
        return len(self.attempts) - self.budget_start


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One conversation's outbound messages, for enqueue_many."""

    tenant_id: str
    messages: Sequence[common_pb2.Message]
    recipient_id: str
    #: Teams: where the replies are posted (from the conversation, never from a request).
    service_url: str
    now: dt.datetime


@dataclass(frozen=True, slots=True)
class Finish:
    """A delivery's last attempt and final state, for finish_many."""

    delivery: Delivery
    attempt: Attempt
    state: str
    now: dt.datetime
    platform_message_id: str = ""


#: A reply job behind an earlier one of its conversation is held, not due, until that one is
#: done (which wakes it). Were that wake lost (its process died between the commit and the
#: wake, or the store failed the wake), it comes due after this anyway, and is held again if
#: the earlier one still waits. Long, so that the jobs of a long queue (a user's sixteen
#: messages behind a slow bot) are not claimed over and over to find they still wait.
REPLY_HOLD_AT_MOST = dt.timedelta(minutes=5)


def held_behind(jobs: Sequence[ReplyJob]) -> set[int]:
    """The indexes of the jobs that wait behind an earlier one of their conversation among
    ``jobs`` (all but the first of each conversation, by sequence)."""
    first: dict[tuple[str, str], int] = {}
    for index, job in enumerate(jobs):
        key = (job.tenant_id, job.conversation_id)
        if key not in first or job.sequence < jobs[first[key]].sequence:
            first[key] = index
    return set(range(len(jobs))) - set(first.values())


@dataclass(frozen=True, slots=True)
class Leasing:
    """Items queued already leased to a queue worker of the queuing process, which is handed
    them after the commit (no poll, no claim): at most ``slots`` of them, until ``until``."""

    owner: str
    until: dt.datetime
    slots: int


@dataclass(frozen=True, slots=True)
class ReplyJob:
    """An inbound message to answer, for enqueue_many."""

    tenant_id: str
    conversation_id: str
    message_id: str
    sequence: int
    now: dt.datetime


@dataclass(frozen=True, slots=True)
class ClaimedReplyJob:
    """A reply job leased to this process; ``attempts`` counts this claim."""

    id: str
    tenant_id: str
    conversation_id: str
    message_id: str
    sequence: int
    attempts: int
    owner: str
    #: The trace of the call that stored the message (a W3C traceparent; "" when not traced).
    trace: str = ""
    #: The message and its conversation as committed with the job: known to the process that
    #: queued the job and handed it over (None: read them).
    message: common_pb2.Message | None = field(default=None, compare=False, repr=False)
    conversation: common_pb2.Conversation | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class ClaimedInboxBatch:
    """A batch of platform events stored to be applied after the call (IngestEvents'
    ``apply_later``), leased to this process; ``attempts`` counts this claim. A tenant's
    batches are applied in the order they were stored (``enqueue_time``)."""

    id: str
    tenant_id: str
    #: The events: a serialized IngestEventsRequest.
    events: bytes
    enqueue_time: dt.datetime
    attempts: int
    owner: str
    #: The trace of the call that stored it (a W3C traceparent; "" when not traced).
    trace: str = ""
