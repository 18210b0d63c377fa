"""The web chat gateway: visitor sessions, the WebSocket, uploads, the widget (docs/web-chat.md)."""
