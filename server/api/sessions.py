"""SessionService: proto in, service call, proto out."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from chat.v1 import session_service_pb2 as pb
from chat.v1 import session_service_pb2_grpc
from server.auth.principal import current_principal
from server.domain.clock import utc_now
from server.domain.violations import Violations
from server.services.idempotency import IdempotentRequests, idempotency_key
from server.services.sessions import SessionService

MAX_ID_CHARS = 128
UPDATE_SESSION_CONTEXT = "UpdateSessionContext"
END_SESSION = "EndSession"


class SessionServicer(session_service_pb2_grpc.SessionServiceServicer):
    """Sessions of the caller's tenant."""

    def __init__(
        self,
        *,
        sessions: SessionService,
        requests: IdempotentRequests,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self._sessions = sessions
        self._requests = requests
        self._clock = clock

    async def GetSession(
        self, request: pb.GetSessionRequest, context: Any
    ) -> pb.GetSessionResponse:
        _require_id(request.session_id)
        session = await self._sessions.get(current_principal().tenant_id, request.session_id)
        return pb.GetSessionResponse(session=session)

    async def UpdateSessionContext(
        self, request: pb.UpdateSessionContextRequest, context: Any
    ) -> pb.UpdateSessionContextResponse:
        _require_id(request.session_id, request.request_id)
        tenant_id = current_principal().tenant_id

        async def update() -> pb.UpdateSessionContextResponse:
            session = await self._sessions.update_context(
                tenant_id,
                request.session_id,
                updates=request.context,
                remove_keys=list(request.remove_keys),
            )
            return pb.UpdateSessionContextResponse(session=session)

        # Setting and removing the same keys again has the same effect: recorded after.
        return await self._requests.once_then_record(
            idempotency_key(tenant_id, UPDATE_SESSION_CONTEXT, request),
            pb.UpdateSessionContextResponse.FromString,
            update,
            clock=self._clock,
        )

    async def EndSession(
        self, request: pb.EndSessionRequest, context: Any
    ) -> pb.EndSessionResponse:
        _require_id(request.session_id, request.request_id)
        caller = current_principal()

        async def end() -> pb.EndSessionResponse:
            session = await self._sessions.end(caller.tenant_id, caller.subject, request.session_id)
            return pb.EndSessionResponse(session=session)

        return await self._requests.once_then_record(
            idempotency_key(caller.tenant_id, END_SESSION, request),
            pb.EndSessionResponse.FromString,
            end,
            clock=self._clock,
        )


def _require_id(session_id: str, request_id: str = "") -> None:
    violations = Violations()
    violations.text("session_id", session_id, limit=MAX_ID_CHARS, required=True)
    violations.text("request_id", request_id, limit=MAX_ID_CHARS)
    violations.raise_any()
