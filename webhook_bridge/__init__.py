"""The webhook bridge: verifies platform webhooks and forwards them to the chat server."""
