"""Composing replies: the responder asked about a message, its answer processed for the
channel and built into outbound messages, the session's context updated.

SendMessage composes before its commit; the reply queue composes for ingested messages.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from google.protobuf import json_format

from chat.v1 import common_pb2
from server.domain.clock import utc_now
from server.domain.errors import InvalidArgument, NotFound
from server.domain.messages import ProcessedContent, build_message
from server.processors.content import ContentProcessor
from server.services.ports import SessionStore
from server.services.responder import RESPONDER_ID, Responder

log = structlog.get_logger("chat.messages")

MAX_REPLIES = 5


class ReplyComposer:
    """Asks the responder and builds its replies."""

    def __init__(
        self,
        *,
        responder: Responder,
        content: ContentProcessor,
        sessions: SessionStore,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self._responder = responder
        self._content = content
        self._sessions = sessions
        self._clock = clock

    async def compose(
        self,
        tenant_id: str,
        conversation: common_pb2.Conversation,
        inbound: common_pb2.Message,
        session: common_pb2.Session,
        *,
        now: dt.datetime,
    ) -> tuple[list[common_pb2.Message], list[ProcessedContent], dict[str, Any]]:
        """Ask the responder, and build its replies (sequences not yet assigned); the
        session's context is updated in place and touched. Also the responder's context
        updates, for a session that changed meanwhile (CommittedPush applies them again)."""
        context = json_format.MessageToDict(session.context)
        reply = await self._responder.reply(
            tenant_id=tenant_id, conversation=conversation, message=inbound, context=context
        )
        replies = await self._replies(tenant_id, conversation.channel, reply.contents)
        # Replies are stamped when they exist: the difference is the bot's response time.
        replied = max(self._clock(), now)
        outbound = [
            build_message(
                conversation,
                processed_reply,
                direction=common_pb2.MESSAGE_DIRECTION_OUTBOUND,
                sender_id=RESPONDER_ID,
                now=replied,
                reply_to=inbound.id,
                metadata={},
            )
            for processed_reply in replies
        ]
        context.update(reply.context_updates)
        session.context.Clear()
        session.context.update(context)
        self._sessions.touch(session, now=now)
        return outbound, replies, dict(reply.context_updates)

    async def _replies(
        self, tenant_id: str, channel: int, contents: Sequence[common_pb2.Content]
    ) -> list[ProcessedContent]:
        """The responder's contents, processed for the channel; a content the channel cannot
        take is left out (and logged) rather than failing the user's message."""
        replies = []
        for index, content in enumerate(contents[:MAX_REPLIES]):
            try:
                replies.append(
                    await self._content.process_outbound(
                        tenant_id, content, channel=channel, field=f"replies[{index}]"
                    )
                )
            except (InvalidArgument, NotFound) as exc:
                log.warning("reply left out", index=index, error=str(exc), reason=exc.reason)
        return replies
