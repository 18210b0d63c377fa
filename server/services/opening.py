"""Opening a conversation: the user's active one on a channel (or a new one), with its live
session (or a new one), remembered for the user's next message.

SendMessage and the ingestion of a platform's message both start here; the reply queue asks
it for the session it answers in.

A conversation started for a message is not written here: the transaction that stores the
message inserts it, with its ConversationStarted and SessionStarted events (see ``Opened``),
so a first contact costs no transaction of its own (the embedded store serializes them). Its
session is created in Redis before that commit (the replies are composed in it), and removed
when the commit does not happen (``unstored``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog

from chat.v1 import common_pb2, events_pb2
from server.domain.conversations import ALREADY_ACTIVE, new_conversation
from server.domain.errors import AlreadyExists, FieldViolation, InvalidArgument
from server.events.envelopes import envelope, stable_event_id
from server.services.active_conversations import ActiveConversations
from server.services.event_writer import EventWriter
from server.services.ports import ConversationRepository, SessionStore

log = structlog.get_logger("chat.opening")

WEB = common_pb2.CHANNEL_TYPE_WEB


@dataclass(slots=True)
class Opened:
    """A conversation and its session, ready for a message, and what opening them left for
    the message's transaction to write."""

    conversation: common_pb2.Conversation
    session: common_pb2.Session
    #: The conversation is new: the message's transaction inserts it (Recording.start).
    started: bool
    #: ConversationStarted and SessionStarted, as due: written before the message's events.
    events: tuple[events_pb2.EventEnvelope, ...] = ()
    #: True once the message is handed to the group commit, which then settles it if its
    #: caller gives up (``ConversationOpener.abandoned``).
    submitted: bool = False


class ConversationOpener:
    """Finds or starts conversations and their sessions; remembers the active ones."""

    def __init__(
        self,
        *,
        conversations: ConversationRepository,
        sessions: SessionStore,
        events: EventWriter,
        active: ActiveConversations,
    ) -> None:
        self._conversations = conversations
        self._sessions = sessions
        self._events = events
        self._active = active
        #: The starts not yet committed or failed, by (tenant, user, channel): the new
        #: conversation's id, and what the user's other first messages wait on.
        self._starting: dict[tuple[str, str, int], tuple[str, asyncio.Future[None]]] = {}
        #: Settling the leftovers of cancelled calls (``settle_later``).
        self._settling: set[asyncio.Task[None]] = set()

    async def open_active(
        self,
        tenant_id: str,
        actor_id: str,
        *,
        user_id: str,
        channel: int,
        channel_conversation_id: str,
        now: dt.datetime,
    ) -> Opened:
        """The user's active conversation on the channel (or a new one, not stored yet) and
        its live session (or a new one). A remembered conversation whose session is live costs
        no MongoDB read (see ActiveConversations). The caller holds what it opened (``held``)
        until its message is stored: meanwhile another first message of the user's on the
        channel waits for that start, rather than start a second conversation that the unique
        index would refuse with the whole batch it shares."""
        key = (tenant_id, user_id, channel)
        while True:
            pending = self._starting.get(key)
            if pending is not None:
                await asyncio.shield(pending[1])
                continue
            recalled = self._active.recall(tenant_id, user_id, channel)
            if recalled is not None:
                session = await self._sessions.current(tenant_id, recalled.id, now=now)
                if session is not None:
                    return Opened(recalled, session, started=False)
                self._active.forget(tenant_id, recalled)
            found = await self._conversations.find_active(tenant_id, user_id, channel)
            if found is not None:
                self._active.remember(tenant_id, found)  # stored: the user's next message
                return await self.open_found(tenant_id, actor_id, found, now=now)
            if key not in self._starting:  # else another call began a start meanwhile
                break
        if channel != WEB and not channel_conversation_id:
            raise InvalidArgument(
                "a new conversation on a platform channel needs its address",
                field_violations=[
                    FieldViolation("channel_conversation_id", "required for a new conversation")
                ],
            )
        conversation = new_conversation(
            user_id=user_id,
            channel=channel,
            channel_conversation_id=channel_conversation_id,
            now=now,
        )
        self._starting[key] = (conversation.id, asyncio.get_running_loop().create_future())
        try:
            # A fresh conversation id: no one else can point a session at it: a new one.
            session, _ = await self._sessions.get_or_create(tenant_id, conversation, now=now)
        except BaseException:
            self._release(tenant_id, conversation)
            raise
        started = envelope(
            tenant_id=tenant_id,
            actor_id=actor_id,
            conversation_id=conversation.id,
            now=now,
            conversation_started=events_pb2.ConversationStarted(conversation=conversation),
        )
        return Opened(
            conversation,
            session,
            started=True,
            events=(started, _session_started(tenant_id, actor_id, session, now)),
        )

    @contextlib.asynccontextmanager
    async def held(self, tenant_id: str, opened: Opened) -> AsyncIterator[Opened]:
        """Around the work from opening to the message's commit: when it fails, what opening
        left is settled (``unstored``); either way the calls waiting for this start go on
        (after a commit, the caller remembers the conversation before they run)."""
        try:
            yield opened
        except Exception:
            await self.unstored(tenant_id, opened)
            raise
        except BaseException:
            # The caller was cancelled (its client gave up) before its message was handed to
            # the group commit: nothing of it will be stored. (Once handed over, the group
            # commit settles it: ``abandoned``.) Settled in a task of its own: this one is
            # being cancelled.
            if not opened.submitted:
                self.settle_later(tenant_id, opened)
            raise
        finally:
            if opened.started:
                self._release(tenant_id, opened.conversation)

    def settle_later(self, tenant_id: str, opened: Opened) -> None:
        """``unstored``, in a task of its own: for a message that will never be stored
        whose caller is gone (cancelled)."""
        task = asyncio.create_task(self.unstored(tenant_id, opened))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def abandoned(self, tenant_id: str, opened: Opened) -> None:
        """The group commit dropped a message whose caller gave up before it was written
        (or whose orphaned commit failed): what opening left is settled."""
        await self.unstored(tenant_id, opened)

    def _release(self, tenant_id: str, conversation: common_pb2.Conversation) -> None:
        key = (tenant_id, conversation.user_id, conversation.channel)
        pending = self._starting.get(key)
        if pending is not None and pending[0] == conversation.id:
            del self._starting[key]
            if not pending[1].done():
                pending[1].set_result(None)

    async def open_found(
        self,
        tenant_id: str,
        actor_id: str,
        conversation: common_pb2.Conversation,
        *,
        now: dt.datetime,
    ) -> Opened:
        """A stored conversation with its live session, or a new one whose SessionStarted is
        written at once, in a transaction of its own (only when a session is renewed): were it
        left to the message's transaction, the user's next message, which finds the session
        live, could commit first, and a message of the session would precede its start."""
        session = await self.session_for(tenant_id, actor_id, conversation, now=now)
        return Opened(conversation, session, started=False)

    async def unstored(self, tenant_id: str, opened: Opened) -> None:
        """The message's transaction failed: a conversation started for it was not stored,
        so its session goes; a session started in a stored conversation stays, and its
        SessionStarted is written on its own (the same event id: once, if it was written).
        Best effort: the caller reports the transaction's error, not this one's."""
        try:
            if opened.started:
                await self._sessions.discard(tenant_id, opened.session)
                return
            for event in opened.events:
                await self._events.write_envelope(event)
        except Exception:
            log.warning(
                "an unstored message's session was not settled",
                conversation_id=opened.conversation.id,
                exc_info=True,
            )

    async def session_for(
        self,
        tenant_id: str,
        actor_id: str,
        conversation: common_pb2.Conversation,
        *,
        now: dt.datetime,
    ) -> common_pb2.Session:
        """The conversation's session, started (SessionStarted, in a transaction of its own)
        when it has none."""
        session, created = await self._sessions.get_or_create(tenant_id, conversation, now=now)
        if created:
            await self._events.write(
                tenant_id=tenant_id,
                actor_id=actor_id,
                conversation_id=conversation.id,
                now=now,
                event_id=stable_event_id(tenant_id, session.id, "started"),
                session_started=events_pb2.SessionStarted(session=session),
            )
        return session

    def remember(self, tenant_id: str, conversation: common_pb2.Conversation) -> None:
        """Keep a conversation's just-committed state for the user's next message."""
        self._active.remember(tenant_id, conversation)

    def closed(self, tenant_id: str, conversation: common_pb2.Conversation) -> None:
        """A conversation was found closed: it is not the user's active one any more."""
        self._active.closed(tenant_id, conversation)


def _session_started(
    tenant_id: str, actor_id: str, session: common_pb2.Session, now: dt.datetime
) -> events_pb2.EventEnvelope:
    """SessionStarted; its id is the session's, so writing it twice yields one event."""
    return envelope(
        tenant_id=tenant_id,
        actor_id=actor_id,
        conversation_id=session.conversation_id,
        now=now,
        event_id=stable_event_id(tenant_id, session.id, "started"),
        session_started=events_pb2.SessionStarted(session=session),
    )


def lost_start(exc: BaseException) -> bool:
    """The unique index refused a new conversation: another first message of the user's on
    the channel started one first, in a transaction running beside this one."""
    return isinstance(exc, AlreadyExists) and exc.reason == ALREADY_ACTIVE


class ConversationClosedError(Exception):
    """The conversation opened for a message cannot take it: it closed before the message was
    stored, or (a new one) another first message of the user started one first. Either way
    the message is opened again."""
