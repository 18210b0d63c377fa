"""A ChatService client for the tests: a real channel, a dev token per tenant."""

from __future__ import annotations

import uuid
from typing import Any

import grpc

from chat.v1 import chat_service_pb2 as chat
from chat.v1 import chat_service_pb2_grpc, common_pb2
from devstack.tokens import mint_dev_token

SECRET = "pipeline-test-secret-long-enough-for-hs256"
JWT_SETTINGS = {
    "CHAT_JWT_SECRET": SECRET,
    "CHAT_JWT_ISSUER": "chat-service-dev",
    "CHAT_JWT_AUDIENCE": "chat-service",
    # The tests drive many calls quickly; rate limits have tests of their own.
    "CHAT_RATE_LIMIT_USER_RPS": "100000",
    "CHAT_RATE_LIMIT_USER_BURST": "100000",
    "CHAT_RATE_LIMIT_TENANT_RPS": "100000",
    "CHAT_RATE_LIMIT_TENANT_BURST": "100000",
}
TENANTS = "tenants:\n  - id: acme\n  - id: globex\n"


class ChatClient:
    """ChatService calls as one tenant."""

    def __init__(self, channel: grpc.aio.Channel, tenant: str) -> None:
        self.stub = chat_service_pb2_grpc.ChatServiceStub(channel)
        token = mint_dev_token(secret=SECRET, tenant_id=tenant, subject=f"{tenant}-app")
        self.metadata = (("authorization", f"Bearer {token}"),)

    async def send(self, text: str = "hello", **fields: Any) -> chat.SendMessageResponse:
        fields.setdefault("user_id", "u-" + uuid.uuid4().hex[:8])
        fields.setdefault("channel", common_pb2.CHANNEL_TYPE_WEB)
        if "content" not in fields:
            fields["content"] = common_pb2.Content(text=common_pb2.TextContent(text=text))
        return await self.stub.SendMessage(
            chat.SendMessageRequest(**fields), metadata=self.metadata, timeout=10
        )

    async def call(self, method: str, request: Any) -> Any:
        return await getattr(self.stub, method)(request, metadata=self.metadata, timeout=10)
