"""The sandbox's app: each platform's API, Bot Framework's keys, the media users send, and
the page; ``Sandbox`` is what a test or ``chat-sandbox`` holds."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiohttp import web

from devstack.sandbox import messenger, page, slack, teams, whatsapp
from devstack.sandbox.core import Bridge, State, TenantSecrets
from devstack.sandbox.faults import Faults
from devstack.sandbox.panel import panel_middleware
from devstack.sandbox.recorder import Recorder, Request
from devstack.sandbox.signing import BotFrameworkKeys


class Sandbox:
    """A running sandbox: its URL, its record and its faults."""

    def __init__(self, *, state: State, runner: web.AppRunner) -> None:
        self.state = state
        self._runner = runner
        self._http: aiohttp.ClientSession | None = None

    @property
    def base(self) -> str:
        return self.state.base

    @property
    def recorder(self) -> Recorder:
        return self.state.recorder

    @property
    def faults(self) -> Faults:
        return self.state.faults

    @property
    def keys(self) -> BotFrameworkKeys:
        return self.state.keys

    @property
    def metadata_url(self) -> str:
        """Bot Framework's OpenID metadata, as the sandbox serves it (the bridge's
        CHAT_TEAMS_OPENID_METADATA_URL)."""
        return f"{self.base}/botframework/openid"

    @property
    def token_url(self) -> str:
        """The client-credentials token endpoint (the server's CHAT_TEAMS_TOKEN_URL)."""
        return f"{self.base}/token"

    # The record and the scripted answers, as the tests use them.
    @property
    def requests(self) -> list[Request]:
        return self.state.recorder.requests

    @property
    def times(self) -> list[float]:
        return self.state.recorder.times

    @property
    def script(self) -> dict[str, list[tuple[int, dict[str, Any], dict[str, str]]]]:
        return self.state.faults.script

    @property
    def stall(self) -> set[str]:
        return self.state.faults.stall

    @stall.setter
    def stall(self, recipients: set[str]) -> None:  # for ``sandbox.stall |= {...}``
        self.state.faults.stall = recipients

    @property
    def release(self) -> asyncio.Event:
        return self.state.faults.release

    def requests_to(self, api: str, recipient: str) -> list[Request]:
        return self.state.recorder.requests_to(api, recipient)

    def sent(self, api: str) -> list[Request]:
        return self.state.recorder.sent(api)

    def to(self, api: str, recipient: str) -> list[Request]:
        return self.state.recorder.to(api, recipient)

    def actions_to(self, api: str, recipient: str) -> list[Any]:
        return self.state.recorder.actions_to(api, recipient)

    def times_to(self, api: str, recipient: str) -> list[float]:
        return self.state.recorder.times_to(api, recipient)

    def connect(self, bridge_url: str, tenant: TenantSecrets) -> None:
        """From now on, post webhooks (users' messages, receipts) to this bridge as ``tenant``."""
        if self._http is None:
            self._http = aiohttp.ClientSession()
        self.state.bridge = Bridge(bridge_url.rstrip("/"), tenant, self._http)
        self.state.recorder.touch()

    async def stop(self) -> None:
        await self.state.close()
        if self._http is not None:
            await self._http.close()
        await self._runner.cleanup()


def create_app(state: State) -> web.Application:
    app = web.Application(
        client_max_size=8 * 1024 * 1024,
        middlewares=[page.local_only, panel_middleware(state.recorder)],
    )
    # Messenger's /me/... before WhatsApp's /{phone-number-id}/...: the first match answers.
    messenger_send = messenger.add_routes(app, state)
    whatsapp.add_routes(app, state, messenger_send=messenger_send)
    slack.add_routes(app, state)
    teams.add_routes(app, state)
    state.keys.add_routes(app)
    state.media.add_routes(app)
    page.add_routes(app, state)
    return app


async def start_sandbox(
    *, host: str = "127.0.0.1", port: int = 0, receipt_delay: float = 0.4
) -> Sandbox:
    """The sandbox on ``host:port`` (0: any free port), not yet connected to a bridge."""
    state = State(receipt_delay=receipt_delay)
    runner = web.AppRunner(create_app(state), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    state.base = f"http://{host}:{runner.addresses[0][1]}"
    return Sandbox(state=state, runner=runner)
