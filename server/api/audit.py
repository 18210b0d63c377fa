"""AuditService: the caller's tenant's audit log, and a check of its hash chain."""

from __future__ import annotations

from typing import Any

from chat.v1 import audit_service_pb2, audit_service_pb2_grpc
from server.api.pages import cursor_int, decode_token, encode_token, page_size
from server.auth.principal import current_principal
from server.domain.errors import FieldViolation, InvalidArgument
from server.repositories.audit import GENESIS_HASH, MongoAuditLog, entry_hash, record_of

MAX_FILTER_CHARS = 128


class AuditServicer(audit_service_pb2_grpc.AuditServiceServicer):
    """Reads the log; nothing here writes it (the worker appends)."""

    def __init__(self, *, audit: MongoAuditLog) -> None:
        self._audit = audit

    async def ListAuditEntries(
        self, request: audit_service_pb2.ListAuditEntriesRequest, context: Any
    ) -> audit_service_pb2.ListAuditEntriesResponse:
        violations = [
            FieldViolation(name, f"at most {MAX_FILTER_CHARS} characters")
            for name in ("actor_id", "resource_id", "action")
            if len(getattr(request, name)) > MAX_FILTER_CHARS
        ]
        if violations:
            raise InvalidArgument("the request is invalid", field_violations=violations)
        limit = page_size(request.page_size)
        query = {
            "rpc": "ListAuditEntries",
            "actor": request.actor_id,
            "resource": request.resource_id,
            "action": request.action,
        }
        cursor = decode_token(request.page_token, query)
        page = await self._audit.page(
            current_principal().tenant_id,
            actor_id=request.actor_id,
            resource_id=request.resource_id,
            action=request.action,
            before_sequence=cursor_int(cursor, "seq") if cursor is not None else None,
            limit=limit + 1,
        )
        token = ""
        if len(page) > limit:
            page = page[:limit]
            token = encode_token(query, {"seq": page[-1].sequence})
        return audit_service_pb2.ListAuditEntriesResponse(entries=page, next_page_token=token)

    async def VerifyAuditChain(
        self, request: audit_service_pb2.VerifyAuditChainRequest, context: Any
    ) -> audit_service_pb2.VerifyAuditChainResponse:
        tenant_id = current_principal().tenant_id
        # The head first: entries the worker appends while this runs lie beyond it and are
        # left for the next check.
        head = await self._audit.head(tenant_id)
        head_sequence = head["sequence"] if head else 0
        checked, previous = 0, GENESIS_HASH

        def broken(sequence: int, problem: str) -> audit_service_pb2.VerifyAuditChainResponse:
            return audit_service_pb2.VerifyAuditChainResponse(
                intact=False,
                entries_checked=checked,
                first_broken_sequence=sequence,
                problem=problem,
            )

        async for document in self._audit.in_order(tenant_id, up_to=head_sequence):
            expected = checked + 1
            sequence = document["sequence"]
            if sequence != expected:
                return broken(expected, f"entry {expected} is missing")
            if document["previous_hash"] != previous:
                return broken(sequence, "does not link to the entry before it")
            if entry_hash(tenant_id, sequence, record_of(document), previous) != document["hash"]:
                return broken(sequence, "its content does not match its hash")
            checked, previous = sequence, document["hash"]
        if checked != head_sequence:
            return broken(
                checked + 1, f"the chain ends at {checked}, its head says {head_sequence}"
            )
        if head is not None and head["hash"] != previous:
            return broken(checked, "the last entry does not match the head's hash")
        return audit_service_pb2.VerifyAuditChainResponse(intact=True, entries_checked=checked)
