"""Sessions: read, change the responder's context, end."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Callable

import structlog
from google.protobuf import json_format, struct_pb2

from chat.v1 import common_pb2, events_pb2
from server.domain.clock import utc_now
from server.domain.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    SessionContendedError,
)
from server.domain.session import is_live
from server.events.envelopes import stable_event_id
from server.services.event_writer import EventWriter
from server.services.ports import SessionStore

log = structlog.get_logger("chat.server")

MAX_CONTEXT_BYTES = 64 * 1024
#: Attempts to end a session that keeps changing meanwhile.
UPDATE_ATTEMPTS = 5
SYSTEM_ACTOR = "system"


class SessionService:
    """Sessions by id, within the caller's tenant."""

    def __init__(
        self,
        *,
        sessions: SessionStore,
        events: EventWriter,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self._sessions = sessions
        self._events = events
        self._clock = clock

    async def get(self, tenant_id: str, session_id: str) -> common_pb2.Session:
        """The session (an active one past its expiry reads as EXPIRED, even before the sweep
        records it); NOT_FOUND once it is long gone, or for another tenant's."""
        session = await self._sessions.get(tenant_id, session_id)
        if session is None:
            raise NotFound("session not found", reason="SESSION_NOT_FOUND")
        if session.status == common_pb2.SESSION_STATUS_ACTIVE and not is_live(
            session, self._clock()
        ):
            session.status = common_pb2.SESSION_STATUS_EXPIRED
        return session

    async def update_context(
        self,
        tenant_id: str,
        session_id: str,
        *,
        updates: struct_pb2.Struct,
        remove_keys: list[str],
    ) -> common_pb2.Session:
        """Set and remove top-level context keys; extends the session."""
        both = sorted(set(updates.keys()) & set(remove_keys))
        if both:
            raise InvalidArgument(
                "a key is both set and removed",
                field_violations=[FieldViolation("remove_keys", f"also set: {', '.join(both)}")],
            )
        try:
            changes = json_format.MessageToDict(updates)
        except ValueError:  # NaN and infinities have no JSON form
            raise InvalidArgument(
                "context is invalid",
                field_violations=[FieldViolation("context", "numbers must be finite")],
            ) from None
        now = self._clock()

        def change(session: common_pb2.Session) -> common_pb2.Session:
            # Applied to the session as stored: again, when it changed meanwhile.
            if session.status != common_pb2.SESSION_STATUS_ACTIVE or not is_live(session, now):
                raise FailedPrecondition("session has ended", reason="SESSION_ENDED")
            context = json_format.MessageToDict(session.context)
            context.update(changes)
            for key in remove_keys:
                context.pop(key, None)
            session.context.Clear()
            session.context.update(context)
            if session.context.ByteSize() > MAX_CONTEXT_BYTES:
                raise InvalidArgument(
                    "context too large",
                    field_violations=[
                        FieldViolation("context", f"at most {MAX_CONTEXT_BYTES} bytes")
                    ],
                )
            self._sessions.touch(session, now=now)
            return session

        updated = await self._sessions.update(tenant_id, session_id, change)
        if updated is None:
            raise NotFound("session not found", reason="SESSION_NOT_FOUND")
        return updated

    async def end(self, tenant_id: str, actor_id: str, session_id: str) -> common_pb2.Session:
        """End it (SessionEnded, once); an ended session comes back as it is."""
        session = await self.get(tenant_id, session_id)
        if session.status != common_pb2.SESSION_STATUS_ACTIVE:
            # Its event again (the same id: written once): the call that ended it may have
            # failed between storing the session and writing the event.
            await self._report(tenant_id, actor_id, session)
            return session
        return await self._end(tenant_id, actor_id, session)

    async def end_current(self, tenant_id: str, actor_id: str, conversation_id: str) -> None:
        """End the conversation's live session, if it has one."""
        session = await self._sessions.current(tenant_id, conversation_id, now=self._clock())
        if session is not None and session.status == common_pb2.SESSION_STATUS_ACTIVE:
            await self._end(tenant_id, actor_id, session)

    async def sweep(self, stopping: asyncio.Event, *, every_seconds: float) -> None:
        """Report expired sessions (SessionEnded, once across every server process) until
        ``stopping`` is set."""
        while not stopping.is_set():
            try:
                await self.expire_due()
            except Exception:
                log.exception("session sweep failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), every_seconds)

    async def expire_due(self, *, limit: int = 100) -> int:
        """End the sessions past their expiry (SessionEnded EXPIRED, once across processes);
        returns how many."""
        now = self._clock()
        expired = 0
        for tenant_id, session_id in await self._sessions.claim_expired(now=now, limit=limit):
            # One at a time: a failure leaves this session for a later sweep, not the batch.
            try:
                expired += await self._expire(tenant_id, session_id, now=now)
            except Exception:
                log.exception("session not expired; a later sweep retries", session_id=session_id)
                with contextlib.suppress(Exception):
                    session = await self._sessions.get(tenant_id, session_id)
                    if session is not None:
                        await self._sessions.reindex(tenant_id, session)
        return expired

    async def _expire(self, tenant_id: str, session_id: str, *, now: dt.datetime) -> bool:
        session = await self._sessions.get(tenant_id, session_id)
        if session is None:
            return False  # long gone
        if session.status != common_pb2.SESSION_STATUS_ACTIVE:
            await self._report(tenant_id, SYSTEM_ACTOR, session)  # its event, again: once
            return False
        if is_live(session, now):
            await self._sessions.reindex(tenant_id, session)  # extended after all
            return False
        ended = await self._end(
            tenant_id,
            SYSTEM_ACTOR,
            session,
            end_time=session.expire_time.ToDatetime(tzinfo=dt.UTC),
            status=common_pb2.SESSION_STATUS_EXPIRED,
        )
        return ended.status == common_pb2.SESSION_STATUS_EXPIRED

    async def _end(
        self,
        tenant_id: str,
        actor_id: str,
        session: common_pb2.Session,
        *,
        end_time: dt.datetime | None = None,
        status: common_pb2.SessionStatus.ValueType = common_pb2.SESSION_STATUS_ENDED,
    ) -> common_pb2.Session:
        """End the session unless it changed meanwhile in a way that keeps it from ending:
        ended by another caller (who reported it), or, for an expiry, extended by activity.
        The session as it stands after."""
        for _ in range(UPDATE_ATTEMPTS):
            expiring = status == common_pb2.SESSION_STATUS_EXPIRED
            # An expiry ends at the expiry time of the session as read (again, when extended).
            now = session.expire_time.ToDatetime(tzinfo=dt.UTC) if expiring else self._clock()
            ended = await self._sessions.end(tenant_id, session, now=end_time or now, status=status)
            if ended is not None:
                break
            fresh = await self._sessions.get(tenant_id, session.id)
            if fresh is None:
                return session
            if fresh.status != common_pb2.SESSION_STATUS_ACTIVE:
                await self._report(tenant_id, actor_id, fresh)  # its event, again: once
                return fresh
            if expiring and is_live(fresh, self._clock()):
                await self._sessions.reindex(tenant_id, fresh)  # extended after all
                return fresh
            session, end_time = fresh, None
        else:
            raise SessionContendedError("the session kept changing; retry")
        await self._report(tenant_id, actor_id, ended)
        return ended

    async def _report(self, tenant_id: str, actor_id: str, ended: common_pb2.Session) -> None:
        """SessionEnded for an ended or expired session. Its id is the session's, so a second
        report (after a failure, or by a second caller) is the same event, written once."""
        await self._events.write(
            tenant_id=tenant_id,
            actor_id=actor_id,
            conversation_id=ended.conversation_id,
            now=ended.end_time.ToDatetime(tzinfo=dt.UTC),
            event_id=stable_event_id(tenant_id, ended.id, "ended"),
            session_ended=events_pb2.SessionEnded(
                session=ended,
                reason=events_pb2.SESSION_END_REASON_EXPIRED
                if ended.status == common_pb2.SESSION_STATUS_EXPIRED
                else events_pb2.SESSION_END_REASON_ENDED,
            ),
        )
