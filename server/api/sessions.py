"""SessionService: proto in, service call, proto out."""

from __future__ import annotations

from typing import Any

from chat.v1 import session_service_pb2 as pb
from chat.v1 import session_service_pb2_grpc
from server.auth.principal import current_principal
from server.domain.errors import FieldViolation, InvalidArgument
from server.services.sessions import SessionService


class SessionServicer(session_service_pb2_grpc.SessionServiceServicer):
    """Sessions of the caller's tenant."""

    def __init__(self, *, sessions: SessionService) -> None:
        self._sessions = sessions

    async def GetSession(
        self, request: pb.GetSessionRequest, context: Any
    ) -> pb.GetSessionResponse:
        _require_id(request.session_id)
        session = await self._sessions.get(current_principal().tenant_id, request.session_id)
        return pb.GetSessionResponse(session=session)

    async def UpdateSessionContext(
        self, request: pb.UpdateSessionContextRequest, context: Any
    ) -> pb.UpdateSessionContextResponse:
        _require_id(request.session_id)
        session = await self._sessions.update_context(
            current_principal().tenant_id,
            request.session_id,
            updates=request.context,
            remove_keys=list(request.remove_keys),
        )
        return pb.UpdateSessionContextResponse(session=session)

    async def EndSession(
        self, request: pb.EndSessionRequest, context: Any
    ) -> pb.EndSessionResponse:
        _require_id(request.session_id)
        caller = current_principal()
        session = await self._sessions.end(caller.tenant_id, caller.subject, request.session_id)
        return pb.EndSessionResponse(session=session)


def _require_id(session_id: str) -> None:
    if not session_id or len(session_id) > 128:
        raise InvalidArgument(
            "session_id is invalid",
            field_violations=[FieldViolation("session_id", "required, at most 128 characters")],
        )
