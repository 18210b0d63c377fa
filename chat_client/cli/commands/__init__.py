"""chatctl's subcommands, one module per area; importing this registers them all."""

from chat_client.cli.commands import admin, conversations, deliveries, export, misc

__all__ = ["admin", "conversations", "deliveries", "export", "misc"]
