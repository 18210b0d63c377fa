"""One visitor's open socket: frames in, frames out, resumable by sequence.

What travels: the chat server's stream of the visitor's conversation, after the sequence the
client last saw (so a reconnect neither misses nor repeats a message), and the client's sends,
each with a client id that is also SendMessage's request_id (a resend after a reconnect is
stored once and answered with the same ack). Frames to the client wait in a bounded queue; a
socket that does not drain it is closed rather than allowed to grow the gateway's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from chat.v1 import chat_service_pb2, common_pb2
from server.domain.tenant import Tenant, WebChannel
from webhook_bridge.web import frames
from webhook_bridge.web.chat import ChatCallError
from webhook_bridge.web.gateway import WebState
from webhook_bridge.web.visitors import Visitor, VisitorTokenError

log = structlog.get_logger("chat.bridge.web")

BAD_FRAME, UNAUTHENTICATED, FORBIDDEN, AUTH_TIMEOUT, TOO_SLOW, TOO_MANY = (
    4400,
    4401,
    4403,
    4408,
    4409,
    4429,
)
#: The widget is told this long before its token expires, to refresh it.
EXPIRY_NOTICE_SECONDS = 120
#: Sends waiting for the server, per socket; more are refused with an error frame.
MAX_PENDING_SENDS = 16
#: Between two typing calls of one socket.
TYPING_INTERVAL_SECONDS = 1.0
STREAM_RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)


class _CloseError(Exception):
    """Close the socket with this code and reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _unexpected(msg: Any) -> tuple[int, str]:
    """The close of a message that is not a text frame."""
    if msg.type == WSMsgType.ERROR:
        # aiohttp reports a frame over max_msg_size this way.
        return WSCloseCode.MESSAGE_TOO_BIG, "frame too large"
    if msg.type == WSMsgType.BINARY:
        return BAD_FRAME, "frames are JSON text"
    return WSCloseCode.OK, "closed"


class VisitorSocket:
    """One open socket of one visitor."""

    def __init__(
        self,
        *,
        ws: web.WebSocketResponse,
        state: WebState,
        tenant: Tenant,
        channel: WebChannel,
        transport: asyncio.Transport | None = None,
    ) -> None:
        self._ws = ws
        self._transport = transport
        self._state = state
        self._tenant = tenant
        self._channel = channel
        self._visitor: Visitor | None = None
        self._conversation_id = ""
        #: The last sequence forwarded to the client: a restarted stream resumes after it.
        self._last_sequence = 0
        self._out: asyncio.Queue[dict[str, Any]] = asyncio.Queue(state.settings.max_queued_frames)
        self._sends: asyncio.Queue[frames.Send] = asyncio.Queue(MAX_PENDING_SENDS)
        self._stream: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._last_typing = 0.0
        self._closing = False
        self._closer: asyncio.Task[None] | None = None

    @property
    def _me(self) -> Visitor:
        """The authenticated visitor (every frame after the first has one)."""
        if self._visitor is None:
            raise RuntimeError("the socket is not authenticated")
        return self._visitor

    async def serve(self) -> None:
        """Authenticate, then read frames until the socket closes."""
        try:
            if not await self._authenticate():
                return
            self._tasks = [
                asyncio.create_task(self._write()),
                asyncio.create_task(self._send_worker()),
                asyncio.create_task(self._expiry()),
            ]
            self._restart_stream()
            await self._read()
        finally:
            self._closing = True
            for task in [*self._tasks, *([self._stream] if self._stream else [])]:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if self._visitor is not None:
                key = (self._tenant.id, self._me.subject)
                self._state.sockets[key] -= 1
                if self._state.sockets[key] <= 0:
                    del self._state.sockets[key]

    async def _close(self, code: int, reason: str) -> None:
        self._closing = True
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self._ws.close(code=code, message=reason.encode()[:120])

    async def _authenticate(self) -> bool:
        """The first frame must be ``auth`` with a valid visitor token of this tenant."""
        try:
            visitor, after = await self._first_frame()
            self._count(visitor)
            try:
                conversation = await self._state.chat.active_conversation(visitor)
            except ChatCallError as exc:
                code = WSCloseCode.TRY_AGAIN_LATER if exc.retryable else FORBIDDEN
                raise _CloseError(code, exc.reason) from None
        except _CloseError as exc:
            await self._close(exc.code, exc.reason)
            return False
        if conversation is not None:
            self._conversation_id = conversation.id
        self._last_sequence = after
        await self._ws.send_json(
            {
                "type": "ready",
                "v": frames.VERSION,
                "visitor_id": visitor.subject,
                "conversation_id": self._conversation_id,
                "last_sequence": conversation.last_sequence if conversation else 0,
                "expires_at": visitor.expires_at,
            }
        )
        return True

    def _count(self, visitor: Visitor) -> None:
        """Count the visitor's socket; at most max_sockets_per_visitor are open."""
        key = (self._tenant.id, visitor.subject)
        if self._state.sockets[key] >= self._state.settings.max_sockets_per_visitor:
            raise _CloseError(TOO_MANY, "too many open sockets for this visitor")
        self._state.sockets[key] += 1
        self._visitor = visitor

    async def _first_frame(self) -> tuple[Visitor, int]:
        """The visitor and the sequence to resume after, from the auth frame."""
        try:
            msg = await self._ws.receive(timeout=self._state.settings.auth_timeout_seconds)
        except TimeoutError:
            raise _CloseError(AUTH_TIMEOUT, "no auth frame in time") from None
        if msg.type != WSMsgType.TEXT:
            raise _CloseError(*_unexpected(msg))
        try:
            frame = frames.parse(msg.data)
            after = frames.sequence(frame.fields, "after_sequence")
        except frames.FrameError as exc:
            raise _CloseError(BAD_FRAME, str(exc)) from None
        if frame.type != "auth":
            raise _CloseError(BAD_FRAME, "the first frame must be auth")
        try:
            return self._state.tokens.verify(frame.fields.get("token"), self._tenant.id), after
        except VisitorTokenError as exc:
            raise _CloseError(UNAUTHENTICATED, str(exc)) from None

    async def _closed_by_client(self, msg: Any) -> None:
        if msg.type in (WSMsgType.ERROR, WSMsgType.BINARY):
            await self._close(*_unexpected(msg))

    async def _read(self) -> None:
        while not self._closing:
            msg = await self._ws.receive()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                return
            if msg.type != WSMsgType.TEXT:
                await self._closed_by_client(msg)
                return
            try:
                await self._handle(frames.parse(msg.data))
            except frames.FrameError as exc:
                await self._close(BAD_FRAME, str(exc))
                return

    def _emit(self, frame: dict[str, Any]) -> None:
        """Queue a frame for the client; a socket too slow to take it is closed."""
        if self._closing:
            return
        try:
            self._out.put_nowait(frame)
        except asyncio.QueueFull:
            log.info("web socket too slow: closed", tenant_id=self._tenant.id)
            self._closing = True
            # Kept apart from the tasks the end of serve() cancels: the close must go out.
            self._closer = asyncio.create_task(self._close_slow())

    async def _close_slow(self) -> None:
        """Close a socket that does not read; a peer that does not even take the close frame
        within a few seconds is cut."""
        try:
            async with asyncio.timeout(5):
                await self._close(TOO_SLOW, "the socket does not read its frames fast enough")
        except TimeoutError:
            if self._transport is not None:
                self._transport.abort()

    async def _write(self) -> None:
        while True:
            frame = await self._out.get()
            try:
                await self._ws.send_str(json.dumps(frame, separators=(",", ":")))
            except (ConnectionError, RuntimeError):
                return

    async def _handle(self, frame: frames.ClientFrame) -> None:
        fields = frame.fields
        if frame.type == "ping":
            self._emit({"type": "pong"})
        elif frame.type == "send":
            send = frames.send(fields)
            limit = self._channel.visitor_messages_per_minute or (
                self._state.settings.messages_per_minute
            )
            wait = self._state.limits.hit(f"sends:{self._tenant.id}:{self._me.subject}", limit)
            if wait:
                self._emit(
                    frames.error(
                        "RATE_LIMITED",
                        "too many messages; wait a moment",
                        client_id=send.client_id,
                        retry_after=wait,
                    )
                )
            else:
                try:
                    self._sends.put_nowait(send)
                except asyncio.QueueFull:
                    self._emit(
                        frames.error(
                            "TOO_MANY_PENDING",
                            "too many messages waiting; resend later",
                            client_id=send.client_id,
                            retry_after=1,
                        )
                    )
        elif frame.type == "resume":
            self._last_sequence = frames.sequence(fields, "after_sequence")
            self._restart_stream()
        elif frame.type == "typing":
            await self._typing(bool(fields.get("typing")))
        elif frame.type == "read":
            up_to = frames.sequence(fields, "up_to_sequence")
            if up_to and self._conversation_id:
                await self._quietly(
                    self._state.chat.mark_read(self._me, self._conversation_id, up_to)
                )
        elif frame.type == "auth":
            await self._reauthenticate(fields.get("token"))

    async def _typing(self, typing: bool) -> None:
        now = time.monotonic()
        if not self._conversation_id or (
            typing and now - self._last_typing < TYPING_INTERVAL_SECONDS
        ):
            return  # nothing to type into yet, or a burst of keystrokes
        self._last_typing = now
        await self._quietly(self._state.chat.typing(self._me, self._conversation_id, typing))

    async def _quietly(self, call: Any) -> None:
        """A call whose failure the client is told of, without closing the socket."""
        try:
            await call
        except ChatCallError as exc:
            self._emit(frames.error(exc.code, exc.reason))

    async def _reauthenticate(self, token: object) -> None:
        """A refreshed token for the same visitor, on the open socket."""
        try:
            visitor = self._state.tokens.verify(token, self._tenant.id)
        except VisitorTokenError as exc:
            self._emit(frames.error("UNAUTHENTICATED", str(exc)))
            return
        if visitor.subject != self._me.subject:
            self._emit(frames.error("FORBIDDEN", "the token names another visitor"))
            return
        self._visitor = visitor
        self._emit({"type": "auth_ok", "expires_at": visitor.expires_at})
        self._restart_stream()  # the old stream ends with the old token

    async def _expiry(self) -> None:
        """Tell the client to refresh before the token expires; close when it has not."""
        while True:
            expires = self._me.expires_at
            await asyncio.sleep(max(0.0, expires - EXPIRY_NOTICE_SECONDS - time.time()))
            if self._me.expires_at == expires:
                self._emit({"type": "token_expiring", "expires_at": expires})
                await asyncio.sleep(max(0.0, expires - time.time()))
                if self._me.expires_at == expires:
                    await self._close(UNAUTHENTICATED, "token expired")
                    return

    async def _send_worker(self) -> None:
        while True:
            send = await self._sends.get()
            await self._send(send)

    async def _send(self, send: frames.Send) -> None:
        content = common_pb2.Content()
        if send.upload_id:
            held = self._state.uploads.get(self._me.subject, send.upload_id)
            if held is None:
                self._emit(
                    frames.error(
                        "UPLOAD_EXPIRED",
                        "the upload is gone (expired or the gateway restarted); upload again",
                        client_id=send.client_id,
                    )
                )
                return
            content.media.data = held.data
            content.media.mime_type = held.mime_type
            content.media.file_name = held.file_name
            content.media.caption = send.text[:1024]
        elif send.choice_id:
            content.interactive_reply.selected_id = send.choice_id
            content.interactive_reply.title = send.choice_title
        else:
            content.text.text = send.text
        # No conversation_id: the visitor's active web conversation is the one (a new one after
        # it was closed), and a resend must be the very same request to be stored once.
        request = chat_service_pb2.SendMessageRequest(
            request_id=send.client_id,
            content=content,
            metadata={"client_id": send.client_id},
        )
        try:
            response = await self._state.chat.send(self._me, request)
        except ChatCallError as exc:
            if exc.code == "NOT_FOUND" and self._conversation_id:
                self._conversation_id = ""  # closed and gone: the next send starts anew
            self._emit(
                frames.error(
                    exc.code, exc.reason, client_id=send.client_id, retryable=exc.retryable
                )
            )
            return
        conversation = response.conversation.id
        if conversation != self._conversation_id:
            # A new conversation (the first message, or after one was closed): follow it.
            self._conversation_id = conversation
            self._last_sequence = 0
            self._restart_stream()
        self._forward_in_order([response.message, *response.replies])
        self._emit(
            {
                "type": "ack",
                "client_id": send.client_id,
                "sequence": response.message.sequence,
                "conversation_id": conversation,
            }
        )

    def _forward_in_order(self, messages: list[common_pb2.Message]) -> None:
        """The send's own message and replies, at once rather than after their round trip
        through the stream, when they are the very next sequences (else the stream, which
        carries every message in order, brings them: forwarding past a gap would skip it)."""
        expected = self._last_sequence + 1
        if [m.sequence for m in messages] != list(range(expected, expected + len(messages))):
            return
        for message in messages:
            self._emit(frames.message(message))
        self._last_sequence = messages[-1].sequence

    def _restart_stream(self) -> None:
        if self._stream is not None:
            self._stream.cancel()
            self._stream = None
        if self._conversation_id and not self._closing:
            self._stream = asyncio.create_task(self._follow(self._conversation_id))

    async def _follow(self, conversation_id: str) -> None:
        """Forward the conversation's events; after a break, resume after the last one."""
        failures = 0
        while not self._closing and conversation_id == self._conversation_id:
            try:
                async for event in self._state.chat.events(
                    self._me, conversation_id, self._last_sequence
                ):
                    failures = 0
                    if event.WhichOneof("event") == "message":
                        if event.message.sequence <= self._last_sequence:
                            continue
                        self._last_sequence = event.message.sequence
                    frame = frames.event(event)
                    if frame is not None:
                        self._emit(frame)
                    if event.WhichOneof("event") == "closed":
                        self._conversation_id = ""
                        return
            except ChatCallError as exc:
                if not exc.retryable and exc.code != "UNAUTHENTICATED":
                    self._emit(frames.error(exc.code, exc.reason))
                    return
            # The stream ended (the token's expiry, a server restart): follow again.
            await asyncio.sleep(STREAM_RETRY_SECONDS[min(failures, len(STREAM_RETRY_SECONDS) - 1)])
            failures += 1
