"""chatctl, the operator's command line (click and rich), built on chat_client."""

from chat_client.cli.app import main

__all__ = ["main"]
