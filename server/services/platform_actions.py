"""Sender actions on the platforms: typing indicators and read receipts.

Best effort and off the caller's path: an indicator that arrives late or not at all is worth
less than the time a caller would wait for it, so each action runs in the background with a
short deadline, and a failure is logged, never raised or retried.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from chat.v1 import common_pb2
from server.channels.base import HOLD_DESTINATION, TYPING, Action
from server.channels.factory import ChannelFactory
from server.domain.tenant import TenantLookup
from server.services.delivery_guards import RateHolds
from server.services.ports import MessageRepository

log = structlog.get_logger("chat.platform_actions")

DEADLINE_SECONDS = 5.0


class PlatformActions:
    """Schedules sender actions for conversations on platform channels."""

    def __init__(
        self,
        *,
        channels: ChannelFactory,
        tenants: TenantLookup,
        messages: MessageRepository,
        holds: RateHolds | None = None,
    ) -> None:
        self._channels = channels
        #: A platform's reported rate limit covers these too: they wait it out (skipped).
        self._holds = holds or RateHolds()
        self._tenants = tenants
        self._messages = messages
        self._tasks: set[asyncio.Task[None]] = set()
        #: Actions on their way: a repeat of one (a typing indicator sent on every keystroke)
        #: is dropped rather than sent again.
        self._inflight: set[tuple[str, str, str]] = set()

    def schedule(
        self,
        tenant_id: str,
        conversation: common_pb2.Conversation,
        kind: str,
        platform_message_id: str = "",
    ) -> None:
        """Send ``kind`` (TYPING, TYPING_OFF, READ) to the conversation's platform, about the
        user's message with ``platform_message_id`` (default: their latest). Web conversations
        need none: their streams carry typing and read status."""
        if conversation.channel in (
            common_pb2.CHANNEL_TYPE_WEB,
            common_pb2.CHANNEL_TYPE_UNSPECIFIED,
        ):
            return
        key = (tenant_id, conversation.id, kind)
        if key in self._inflight:
            return
        self._inflight.add(key)
        task = asyncio.create_task(self._send(tenant_id, conversation, kind, platform_message_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _task: self._inflight.discard(key))

    async def wait(self) -> None:
        """Until every scheduled action has run (for shutdown and tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        """Drop what has not run yet."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _send(
        self, tenant_id: str, conversation: common_pb2.Conversation, kind: str, message_id: str
    ) -> None:
        channel = self._channels.get(conversation.channel)
        tenant = self._tenants.get(tenant_id)
        if channel is None or tenant is None or channel.validate_config(tenant):
            return
        recipient = conversation.channel_conversation_id
        if self._holds.seconds(tenant_id, conversation.channel, recipient) > 0:
            return  # the platform asked to slow down: an indicator is not worth a message
        try:
            platform_id = ""
            if message_id:
                platform_id = message_id
            elif kind == TYPING:
                latest = await self._messages.last_inbound(tenant_id, conversation.id)
                platform_id = latest.platform_message_id if latest is not None else ""
            response = await asyncio.wait_for(
                channel.send_action(
                    Action(
                        tenant=tenant,
                        kind=kind,
                        recipient_id=recipient,
                        platform_message_id=platform_id,
                        service_url=conversation.metadata.get("service_url", ""),
                    )
                ),
                DEADLINE_SECONDS,
            )
        except Exception as exc:  # noqa: BLE001 - best effort, see the module docstring
            log.warning("platform action failed", kind=kind, error=repr(exc))
            return
        if response is not None and response.hold:
            scope = recipient if response.hold == HOLD_DESTINATION else ""
            self._holds.hold(tenant_id, conversation.channel, scope, response.retry_after or 5.0)
        if response is not None and not response.success and response.error is not None:
            log.info(
                "platform action refused",
                kind=kind,
                channel=conversation.channel,
                code=response.error.code,
            )
