"""Live conversation events through Redis pub/sub, so a stream on one server process sees what
happened on any other.

Publishing is one pipelined round trip per batch. Subscribing goes through one hub per
process: a single pub/sub connection, subscribed to each conversation that has a local
stream, fanning every event out to the local streams' bounded queues. Pub/sub keeps
nothing: the streams recover what they missed from MongoDB (by sequence), and the hub tells
them to when its connection was lost and came back.

On Redis Cluster the channels are sharded (SPUBLISH, SSUBSCRIBE): an event goes only to the
primary owning its channel's slot, the tenant's (where the keys published with it live, so a
publish stays one MULTI), instead of every node of the cluster; the hub then holds one
connection per primary that owns a subscribed channel. redis-py refuses plain PUBLISH in a
cluster pipeline anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import Sequence
from typing import Any

import structlog
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterPubSub, RedisCluster
from redis.exceptions import RedisError

from chat.v1 import chat_service_pb2, common_pb2
from server.domain.errors import HubClosingError, SubscriberTooSlowError
from server.repositories.conversation_cache import RedisConversationCache
from server.repositories.redis_client import RedisClient
from server.repositories.redis_errors import translate_redis_errors
from server.repositories.sessions import STORED, RedisSessionStore

log = structlog.get_logger("chat.live")

Event = chat_service_pb2.StreamConversationEventsResponse
SUBSCRIBE_TIMEOUT_SECONDS = 5.0
_RECONNECT_DELAY_SECONDS = 0.5
# How long one read of the sharded hub waits: a subscription waits for the read on its node to
# end (they share the connection), so this bounds what a new stream waits on a quiet hub.
_SHARDED_READ_SECONDS = 0.1


def live_channel(tenant_id: str, conversation_id: str) -> str:
    """The pub/sub channel of one conversation; the tenant in braces, as in every key: on
    Redis Cluster the channel is sharded (SPUBLISH), in the slot of the keys it is published
    with."""
    return f"chat:{{{tenant_id}}}:live:{conversation_id}"


class RedisLiveEvents:
    """Publishes a conversation's live events."""

    def __init__(
        self, *, client: RedisClient, cache: RedisConversationCache, sessions: RedisSessionStore
    ) -> None:
        self._client = client
        self._cache = cache
        self._sessions = sessions
        self._sharded = isinstance(client, RedisCluster)

    @translate_redis_errors
    async def publish(
        self,
        tenant_id: str,
        conversation_id: str,
        events: Sequence[Event],
        *,
        conversation: common_pb2.Conversation | None = None,
        session: common_pb2.Session | None = None,
    ) -> bool:
        """Publish in order, in one round trip with the conversation's new state for the
        cache when it changed, and the session when it was touched (then as one MULTI). False
        when the session changed since it was read: it is then not written (the rest is).
        Raises StoreError when Redis fails or is unreachable."""
        if not events and conversation is None and session is None:
            return True
        channel = live_channel(tenant_id, conversation_id)
        saved = -1
        async with self._client.pipeline(transaction=session is not None) as pipe:
            if conversation is not None:
                self._cache.queue_store(pipe, tenant_id, conversation)
            publish = pipe.spublish if self._sharded else pipe.publish
            for event in events:
                publish(channel, event.SerializeToString())
            if session is not None:
                saved = self._sessions.queue_save(pipe, tenant_id, session)
            results = await pipe.execute()
        return saved < 0 or results[saved] == STORED


# Markers, compared by identity, never sent.
_OVERFLOW = Event()
_CLOSING = Event()


class Subscription:
    """One stream's view of a conversation: a bounded queue of events.

    ``None`` in the queue means "you may have missed events: catch up from storage". A
    subscription that hears nothing for a while gets one too, from a single timer per
    subscription that is moved only when it fires: with a thousand streams, an event costs no
    timer work per stream (a timeout per wait cost a tenth of the server's time in fan-out).
    """

    def __init__(self, channel: str, limit: int) -> None:
        self.channel = channel
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=limit)
        self._overflowed = False
        self._heard_at = time.monotonic()
        self._idle_seconds = math.inf
        self._deadline = math.inf  # time.monotonic()
        self._timer: asyncio.TimerHandle | None = None

    def offer(self, event: Event | None) -> None:
        """Queue an event; a full queue drops the subscriber (and what it had queued)."""
        if self._overflowed:
            return
        self._heard_at = time.monotonic()
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._end(_OVERFLOW)

    def close(self) -> None:
        """End the subscription: the server is shutting down."""
        if not self._overflowed:
            self._end(_CLOSING)

    def discard(self) -> None:
        """The stream is gone: stop the timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def next(
        self, *, idle_seconds: float = math.inf, deadline: float = math.inf
    ) -> Event | None:
        """The next event; None once nothing was heard for ``idle_seconds`` or the
        ``deadline`` (time.monotonic()) passed. Raises SubscriberTooSlowError once the queue
        has overflowed, HubClosingError once the server is shutting down."""
        if self._queue.empty():
            self._idle_seconds, self._deadline = idle_seconds, deadline
            if self._timer is None:
                self._schedule()
        event = await self._queue.get()
        if event is _OVERFLOW:
            raise SubscriberTooSlowError
        if event is _CLOSING:
            raise HubClosingError
        return event

    def _wake_at(self) -> float:
        return min(self._heard_at + self._idle_seconds, self._deadline)

    def _schedule(self) -> None:
        wake_at = self._wake_at()
        if wake_at != math.inf:
            delay = max(0.0, wake_at - time.monotonic())
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._overflowed:
            return
        if not self._queue.empty():
            return  # the stream is busy; next() sets the timer again once it has caught up
        if time.monotonic() < self._wake_at():
            self._schedule()  # heard something since the timer was set
            return
        self.offer(None)

    def _end(self, marker: Event) -> None:
        self._overflowed = True
        self.discard()
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(marker)


class LiveHub:
    """This process's subscriptions, over one pub/sub connection."""

    def __init__(self, *, client: RedisClient, queue_limit: int) -> None:
        self._client = client
        self._queue_limit = queue_limit
        self._pubsub: PubSub = client.pubsub()
        # On Redis Cluster: sharded channels, read from every primary owning one.
        self._sharded: ClusterPubSub | None = (
            self._pubsub if isinstance(self._pubsub, ClusterPubSub) else None
        )
        self._local: dict[str, set[Subscription]] = {}
        # SUBSCRIBE commands sent and confirmed per channel with local subscribers: a
        # subscriber waits until its own SUBSCRIBE is confirmed, so nothing published after
        # that is missed.
        self._sent: dict[str, int] = {}
        self._confirmed: dict[str, int] = {}
        self._changed = asyncio.Condition()
        self._lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._control = f"chat:live-hub:{uuid.uuid4().hex}"
        self._closing = False

    @property
    def subscriber_count(self) -> int:
        """Local subscriptions (for metrics and tests)."""
        return sum(len(subs) for subs in self._local.values())

    @translate_redis_errors
    async def subscribe(self, tenant_id: str, conversation_id: str) -> Subscription:
        """Subscribe; returns once Redis confirmed, so every later publish arrives."""
        channel = live_channel(tenant_id, conversation_id)
        subscription = Subscription(channel, self._queue_limit)
        if self._closing:
            subscription.close()
        async with self._lock:
            await self._start()
            subscribers = self._local.setdefault(channel, set())
            subscribers.add(subscription)
            if len(subscribers) > 1:
                target = self._sent[channel]
            else:
                # Counted before it is sent: the reader may see the confirmation before the
                # send returns, and must know it is expected rather than a resubscription.
                self._sent[channel] = self._sent.get(channel, 0) + 1
                target = self._sent[channel]
                try:
                    await self._send_subscribe(channel)
                except BaseException:
                    self._remove(subscription)
                    raise
        try:
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT_SECONDS), self._changed:
                await self._changed.wait_for(lambda: self._confirmed.get(channel, 0) >= target)
        except BaseException:
            await self.unsubscribe(subscription)
            raise
        return subscription

    async def unsubscribe(self, subscription: Subscription) -> None:
        """Remove one subscription; the channel is left when its last one goes."""
        async with self._lock:
            if self._remove(subscription):
                with contextlib.suppress(RedisError, OSError):
                    await self._send_unsubscribe(subscription.channel)

    def end_streams(self) -> None:
        """Tell every local stream to end (at shutdown, before the server drains calls)."""
        self._closing = True
        for subscribers in self._local.values():
            for subscription in subscribers:
                subscription.close()

    async def close(self) -> None:
        """Stop reading and close the connection."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        await self._pubsub.aclose()

    def _remove(self, subscription: Subscription) -> bool:
        """Forget the subscription; True when it was the channel's last."""
        subscribers = self._local.get(subscription.channel)
        if subscribers is None:
            return False
        subscribers.discard(subscription)
        subscription.discard()
        if subscribers:
            return False
        del self._local[subscription.channel]
        self._sent.pop(subscription.channel, None)
        self._confirmed.pop(subscription.channel, None)
        return True

    async def _send_subscribe(self, channel: str) -> None:
        if self._sharded is not None:
            await self._sharded.ssubscribe(channel)
        else:
            await self._pubsub.subscribe(channel)

    async def _send_unsubscribe(self, channel: str) -> None:
        if self._sharded is not None:
            await self._sharded.sunsubscribe(channel)
        else:
            await self._pubsub.unsubscribe(channel)

    async def _start(self) -> None:
        if self._reader is None:
            if self._sharded is None:
                # A channel of its own gives the connection a subscription before the first
                # stream's, so the reader always has a connection to read. (The sharded
                # reader waits out its timeout when it has no node to read.)
                await self._pubsub.subscribe(self._control)
            self._reader = asyncio.create_task(self._read(), name="live-hub-reader")

    async def _next_message(self) -> dict[str, Any] | None:
        message: dict[str, Any] | None
        if self._sharded is not None:
            message = await self._sharded.get_sharded_message(timeout=_SHARDED_READ_SECONDS)
        else:
            message = await self._pubsub.get_message(timeout=1.0)
        return message

    async def _read(self) -> None:
        while True:
            try:
                message = await self._next_message()
                if message is None:
                    continue
                kind = message["type"]
                channel = _text(message["channel"])
                if kind in ("message", "smessage"):
                    self._dispatch(channel, message["data"])
                elif kind in ("subscribe", "ssubscribe"):
                    await self._on_subscribed(channel)
            except (RedisError, OSError) as exc:
                log.warning("live events connection lost", error=repr(exc))
                await asyncio.sleep(_RECONNECT_DELAY_SECONDS)
            except Exception:
                # The reader must outlive anything one message does, or every stream of
                # the process would wait forever.
                log.exception("live events reader error")
                await asyncio.sleep(_RECONNECT_DELAY_SECONDS)

    async def _on_subscribed(self, channel: str) -> None:
        async with self._changed:
            sent = self._sent.get(channel, 0)
            confirmed = self._confirmed.get(channel, 0) + 1
            if confirmed > sent:
                # The connection came back and redis-py subscribed again: whatever was
                # published meanwhile is lost here, so the streams catch up from storage.
                confirmed = sent
                for subscription in self._local.get(channel, ()):
                    subscription.offer(None)
            if channel in self._local:
                self._confirmed[channel] = confirmed
            elif channel != self._control and sent == 0:
                # redis-py subscribed again, after a reconnection, to a channel whose streams
                # ended while the connection was down: leave it now.
                with contextlib.suppress(RedisError, OSError):
                    await self._send_unsubscribe(channel)
            self._changed.notify_all()

    def _dispatch(self, channel: str, data: bytes) -> None:
        subscribers = self._local.get(channel)
        if not subscribers:
            return
        try:
            event = Event.FromString(data)
        except Exception:  # noqa: BLE001 - a foreign publisher on our channel
            log.warning("undecodable live event dropped", channel=channel)
            return
        for subscription in subscribers:
            subscription.offer(event)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
