"""DeliveryService: the outbound queue's records, its failures, and replaying them."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

from chat.v1 import common_pb2, delivery_service_pb2, delivery_service_pb2_grpc
from server.api.pages import decode_time_cursor, encode_time_cursor, page_size
from server.api.times import checked_range, range_violations
from server.auth.principal import current_principal
from server.channels.factory import ChannelFactory
from server.domain.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from server.domain.queues import FAILED, QUEUED, SENDING, SENT, Delivery
from server.domain.tenant import TenantLookup
from server.domain.violations import Violations
from server.services.idempotency import IdempotentRequests, RequestKey, fingerprint_of
from server.services.live import timestamp_of
from server.services.ports import DeliveryQueue

MAX_ID_CHARS = 128
RETRY_DELIVERY = "RetryDelivery"


class DeliveryServicer(delivery_service_pb2_grpc.DeliveryServiceServicer):
    """Reads and replays deliveries of the caller's tenant."""

    def __init__(
        self,
        *,
        deliveries: DeliveryQueue,
        requests: IdempotentRequests,
        clock: Callable[[], dt.datetime],
        channels: ChannelFactory,
        tenants: TenantLookup,
        on_requeue: Callable[[], None] = lambda: None,
    ) -> None:
        self._channels = channels
        self._tenants = tenants
        self._deliveries = deliveries
        self._requests = requests
        self._clock = clock
        self._on_requeue = on_requeue

    async def GetDeliveryStatus(
        self, request: delivery_service_pb2.GetDeliveryStatusRequest, context: Any
    ) -> delivery_service_pb2.GetDeliveryStatusResponse:
        _require_id(request.message_id)
        found = await self._deliveries.get(current_principal().tenant_id, request.message_id)
        if found is None:
            raise NotFound("delivery not found", reason="DELIVERY_NOT_FOUND")
        return delivery_service_pb2.GetDeliveryStatusResponse(delivery=to_proto(found))

    async def ListFailedDeliveries(
        self, request: delivery_service_pb2.ListFailedDeliveriesRequest, context: Any
    ) -> delivery_service_pb2.ListFailedDeliveriesResponse:
        violations = Violations()
        violations.enum("channel", request.channel, common_pb2.ChannelType.DESCRIPTOR)
        limit = violations.attempt(lambda: page_size(request.page_size), fallback=0)
        window = request.update_time_range
        violations.extend(range_violations(window, "update_time_range"))
        query = {
            "rpc": "ListFailedDeliveries",
            "channel": request.channel,
            "range": window.SerializeToString().hex(),
        }
        after = violations.attempt(
            lambda: decode_time_cursor(request.page_token, query), fallback=None
        )
        violations.raise_any()
        updated_from, updated_to = checked_range(window, "update_time_range")
        page = await self._deliveries.failed_page(
            current_principal().tenant_id,
            channel=request.channel,
            updated_from=updated_from,
            updated_to=updated_to,
            after=after,
            limit=limit + 1,
        )
        token = ""
        if len(page) > limit:
            page = page[:limit]
            last = page[-1]
            token = encode_time_cursor(query, last.update_time, last.id)
        return delivery_service_pb2.ListFailedDeliveriesResponse(
            deliveries=[to_proto(document) for document in page], next_page_token=token
        )

    async def RetryDelivery(
        self, request: delivery_service_pb2.RetryDeliveryRequest, context: Any
    ) -> delivery_service_pb2.RetryDeliveryResponse:
        violations = Violations()
        violations.text("message_id", request.message_id, limit=MAX_ID_CHARS, required=True)
        violations.text("request_id", request.request_id, limit=MAX_ID_CHARS)
        violations.raise_any()
        key = RequestKey(
            current_principal().tenant_id,
            RETRY_DELIVERY,
            request.request_id,
            fingerprint_of(
                delivery_service_pb2.RetryDeliveryRequest(message_id=request.message_id)
            ),
        )
        return await self._requests.once(
            key,
            delivery_service_pb2.RetryDeliveryResponse.FromString,
            lambda: self._retry(key, request.message_id),
        )

    async def _retry(
        self, key: RequestKey, message_id: str
    ) -> delivery_service_pb2.RetryDeliveryResponse:
        tenant_id = key.tenant_id
        now = self._clock()
        requeued = await self._deliveries.requeue(tenant_id, message_id, now=now)
        if requeued is None:
            if await self._deliveries.get(tenant_id, message_id) is None:
                raise NotFound("delivery not found", reason="DELIVERY_NOT_FOUND")
            raise FailedPrecondition("the delivery has not failed", reason="DELIVERY_NOT_FAILED")
        response = delivery_service_pb2.RetryDeliveryResponse(delivery=to_proto(requeued))
        # Recorded after the requeue, on its own: a racing retry that recorded first is
        # answered with its response (IdempotentRequests).
        await self._requests.record(key, response, now=now, tx=None)
        self._on_requeue()
        return response

    async def CheckChannel(
        self, request: delivery_service_pb2.CheckChannelRequest, context: Any
    ) -> delivery_service_pb2.CheckChannelResponse:
        channel = self._channels.get(request.channel)
        if channel is None:
            raise InvalidArgument(
                "channel is not a platform",
                field_violations=[
                    FieldViolation("channel", "one of WHATSAPP, SLACK, TEAMS or MESSENGER")
                ],
            )
        tenant = self._tenants.get(current_principal().tenant_id)
        problem = channel.validate_config(tenant) if tenant is not None else "no tenant"
        if tenant is None or problem:
            raise FailedPrecondition(
                f"the channel is not configured: {problem}", reason="CHANNEL_NOT_CONFIGURED"
            )
        started = time.monotonic()
        answer = await channel.health_check(tenant)
        return delivery_service_pb2.CheckChannelResponse(
            healthy=answer.success,
            error=answer.error,
            check_time=timestamp_of(self._clock()),
            latency_ms=round((time.monotonic() - started) * 1000),
        )


def _require_id(message_id: str) -> None:
    if not message_id or len(message_id) > MAX_ID_CHARS:
        raise InvalidArgument(
            "message_id is invalid",
            field_violations=[FieldViolation("message_id", f"required, at most {MAX_ID_CHARS}")],
        )


_STATUS = {
    QUEUED: common_pb2.DELIVERY_STATUS_QUEUED,
    SENDING: common_pb2.DELIVERY_STATUS_QUEUED,
    SENT: common_pb2.DELIVERY_STATUS_SENT,
    FAILED: common_pb2.DELIVERY_STATUS_FAILED,
}


def to_proto(delivery: Delivery) -> delivery_service_pb2.Delivery:
    """The contract's view of a delivery record."""
    answer = delivery_service_pb2.Delivery(
        message_id=delivery.id,
        conversation_id=delivery.conversation_id,
        channel=delivery.channel,
        recipient_id=delivery.recipient_id,
        status=_STATUS[delivery.state],
        attempt_count=len(delivery.attempts),
        platform_message_id=delivery.platform_message_id,
    )
    answer.create_time.FromDatetime(delivery.create_time)
    answer.update_time.FromDatetime(delivery.update_time)
    if delivery.state == QUEUED and delivery.due_time:
        answer.next_attempt_time.FromDatetime(delivery.due_time)
    for attempt in delivery.attempts:
        item = answer.attempts.add(
            success=attempt.success, platform_message_id=attempt.platform_message_id
        )
        item.attempt_time.FromDatetime(attempt.time)
        if attempt.error is not None:
            item.error.CopyFrom(attempt.error)
    failures = [a for a in answer.attempts if not a.success]
    if failures:
        answer.last_error.CopyFrom(failures[-1].error)
    return answer
