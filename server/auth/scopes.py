"""The scope each RPC requires: one table, checked by a test against the contract."""

from __future__ import annotations

from collections.abc import Mapping

CHAT_READ = "chat:read"
CHAT_WRITE = "chat:write"
CHAT_INGEST = "chat:ingest"
CHAT_ADMIN = "chat:admin"
#: A web chat visitor (minted by the bridge's gateway): its own WEB conversations only.
CHAT_WEB = "chat:web"

#: Methods anyone may call without a token: probes and tooling.
PUBLIC_METHODS: frozenset[str] = frozenset(
    {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    }
)

#: Methods an admin may call for a tenant that is not configured yet: UpsertTenant creates it.
TENANT_CREATING_METHODS: frozenset[str] = frozenset({"/chat.v1.TenantService/UpsertTenant"})

#: Full method name -> the scope the caller's token must carry. A method missing here is
#: refused (PERMISSION_DENIED), so a new RPC is closed until someone decides its scope.
REQUIRED_SCOPES: Mapping[str, str] = {
    "/chat.v1.ChatService/SendMessage": CHAT_WRITE,
    "/chat.v1.ChatService/GetConversation": CHAT_READ,
    "/chat.v1.ChatService/ListConversations": CHAT_READ,
    "/chat.v1.ChatService/CloseConversation": CHAT_WRITE,
    "/chat.v1.ChatService/ListMessages": CHAT_READ,
    "/chat.v1.ChatService/SearchMessages": CHAT_READ,
    "/chat.v1.ChatService/ExportConversation": CHAT_READ,
    "/chat.v1.ChatService/StreamConversationEvents": CHAT_READ,
    "/chat.v1.ChatService/SendTypingIndicator": CHAT_WRITE,
    "/chat.v1.ChatService/MarkRead": CHAT_WRITE,
    "/chat.v1.ChatService/GetMessageMedia": CHAT_READ,
    "/chat.v1.SessionService/GetSession": CHAT_READ,
    "/chat.v1.SessionService/UpdateSessionContext": CHAT_WRITE,
    "/chat.v1.SessionService/EndSession": CHAT_WRITE,
    "/chat.v1.IngestService/IngestEvents": CHAT_INGEST,
    "/chat.v1.DeliveryService/GetDeliveryStatus": CHAT_READ,
    "/chat.v1.DeliveryService/ListFailedDeliveries": CHAT_ADMIN,
    "/chat.v1.DeliveryService/RetryDelivery": CHAT_ADMIN,
    "/chat.v1.DeliveryService/CheckChannel": CHAT_ADMIN,
    "/chat.v1.TenantService/GetTenant": CHAT_ADMIN,
    "/chat.v1.TenantService/UpsertTenant": CHAT_ADMIN,
    "/chat.v1.AnalyticsService/GetTenantAnalytics": CHAT_READ,
    "/chat.v1.AuditService/ListAuditEntries": CHAT_ADMIN,
    "/chat.v1.AuditService/VerifyAuditChain": CHAT_ADMIN,
}

#: What a ``chat:web`` token may call, whatever scope the table above names; ChatServicer
#: then holds it to its own user on the WEB channel and its own conversations
#: (server/api/visitors.py). Everything else is refused.
WEB_METHODS: frozenset[str] = frozenset(
    {
        "/chat.v1.ChatService/SendMessage",
        "/chat.v1.ChatService/GetConversation",
        "/chat.v1.ChatService/ListConversations",
        "/chat.v1.ChatService/ListMessages",
        "/chat.v1.ChatService/StreamConversationEvents",
        "/chat.v1.ChatService/SendTypingIndicator",
        "/chat.v1.ChatService/MarkRead",
        "/chat.v1.ChatService/GetMessageMedia",
    }
)
