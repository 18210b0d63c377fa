"""The platform sandbox: WhatsApp, Messenger, Slack and Teams played locally.

One aiohttp app answers the service's calls to each platform's API as the platform would,
records every request, sends the receipts a platform sends back (signed) to the bridge, and
serves a page where a person chats as a platform user. `make run` starts it (``chat-sandbox``)
and the tests use the same app as their stand-in for the platforms (tests/support/stand_ins.py).
Part of the dev stack only: nothing in ``server/`` or ``webhook_bridge/`` imports it.
"""

from devstack.sandbox.app import Sandbox, start_sandbox

__all__ = ["Sandbox", "start_sandbox"]
