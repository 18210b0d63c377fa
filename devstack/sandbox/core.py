"""What the platform modules share: the record, the faults, the page's chats, the media, the
tenant whose secrets sign the webhooks, and the way to the bridge."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from devstack.sandbox.chats import Chats
from devstack.sandbox.errors import Refused, an_object
from devstack.sandbox.faults import Faults, respond
from devstack.sandbox.media import MediaStore
from devstack.sandbox.panel import readable, show
from devstack.sandbox.recorder import Recorder
from devstack.sandbox.signing import BotFrameworkKeys, meta_signature

Receipts = Callable[[], Coroutine[Any, Any, None]]
#: A platform waits this long for the bridge's answer to a webhook (aiohttp's default is 5 min,
#: which would hold the page's send as long).
WEBHOOK_TIMEOUT = aiohttp.ClientTimeout(total=10)
#: ``post_webhook``'s status when the bridge did not answer in time, or could not be reached.
NO_ANSWER = 0
UNREACHABLE = -1
#: A receipt the bridge could not take is posted again after these pauses (seconds).
RECEIPT_RETRY_DELAYS = (1.0, 2.0, 4.0)


def compact(payload: Any) -> bytes:
    """A webhook's body as the platforms send it: JSON without spaces."""
    return json.dumps(payload, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class TenantSecrets:
    """The tenant the sandbox plays the platforms for: its ids and webhook secrets, and the
    tokens its sends must carry ("": any bearer token)."""

    tenant_id: str
    whatsapp_secret: str = ""
    phone_number_id: str = ""
    messenger_secret: str = ""
    page_id: str = ""
    slack_secret: str = ""
    teams_app_id: str = ""
    whatsapp_token: str = field(default="", repr=False)
    messenger_token: str = field(default="", repr=False)
    slack_token: str = field(default="", repr=False)


@dataclass
class Bridge:
    """Where the sandbox posts webhooks: the bridge's URL and the tenant it posts as."""

    url: str
    tenant: TenantSecrets
    http: aiohttp.ClientSession


@dataclass
class State:
    recorder: Recorder = field(default_factory=Recorder)
    faults: Faults = field(default_factory=Faults)
    chats: Chats = field(default_factory=Chats)
    media: MediaStore = field(default_factory=MediaStore)
    keys: BotFrameworkKeys = field(default_factory=BotFrameworkKeys)
    #: The sandbox's own URL (the platforms' API base, and Teams' serviceUrl without the "/").
    base: str = ""
    #: None: no webhooks are sent (a test posts its own); receipts are then not sent either.
    bridge: Bridge | None = None
    #: Between a send and each receipt the platform sends back.
    receipt_delay: float = 0.4
    #: Teams: the user of each personal conversation a user wrote in (their read receipts').
    teams_users: dict[str, str] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.chats.on_change = self.recorder.touch

    def later(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background (receipts), cancelled when the sandbox stops."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        self.faults.release.set()  # answer whatever is still held, so the service stops at once
        self.recorder.touch()  # and the page's long polls
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def post_webhook(
        self, platform: str, path: str, body: bytes, headers: dict[str, str]
    ) -> int:
        """Post a signed webhook to the bridge, recorded for the panel; the bridge's status
        (``NO_ANSWER`` or ``UNREACHABLE`` when it gave none)."""
        if self.bridge is None:
            raise RuntimeError("the sandbox has no bridge to send webhooks to")
        url = f"{self.bridge.url}/webhooks/{platform}/{self.bridge.tenant.tenant_id}{path}"
        try:
            async with self.bridge.http.post(
                url, data=body, headers=headers, timeout=WEBHOOK_TIMEOUT
            ) as response:
                status, answer = response.status, await response.text()
        except TimeoutError:
            status = NO_ANSWER
            answer = f"the bridge did not answer within {WEBHOOK_TIMEOUT.total:.0f} s"
        except aiohttp.ClientError as exc:
            status, answer = UNREACHABLE, f"the bridge could not be reached: {exc}"
        self.recorder.exchange(
            direction="to bridge",
            platform=platform,
            method="POST",
            path=url,
            headers=headers,
            body=readable(body),
            status=status,
            answer=answer[:2000],
        )
        return status

    async def post_receipt(self, post: Callable[[], Awaitable[int]]) -> int:
        """Post a receipt webhook as the platforms do: again, a little later each time, while
        the bridge answers 5xx or 429 or not at all (Meta and Bot Framework retry for hours;
        the sandbox a few times within seconds). ``post`` signs afresh each time."""
        status = await post()
        for delay in RECEIPT_RETRY_DELAYS:
            if not (status >= 500 or status == 429 or status in (NO_ANSWER, UNREACHABLE)):
                break
            await asyncio.sleep(delay)
            status = await post()
        return status

    async def post_meta(self, platform: str, secret: str, payload: dict[str, Any]) -> int:
        """A WhatsApp or Messenger webhook, signed ``X-Hub-Signature-256`` with ``secret``."""
        body = compact(payload)
        headers = {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": meta_signature(secret, body),
        }
        return await self.post_webhook(platform, "", body, headers)

    def settle_send(
        self,
        platform: str,
        recipient: str,
        *,
        sent: bool,
        platform_id: str,
        view: dict[str, Any] | None,
        refusal: str,
        receipts: Receipts | None = None,
    ) -> None:
        """After a message send: the bot's message in the chat (ticked sent) and the receipts
        the platform sends later; or a note of the refusal (``refusal``: the answer)."""
        if not sent:
            self.chats.add(platform, recipient, "note", f"the send was answered {refusal}")
            return
        self.chats.add(platform, recipient, "bot", "", platform_id=platform_id, view=view)
        self.chats.mark(platform, platform_id, "sent")
        if self.bridge is not None and receipts is not None:
            self.later(receipts())

    def record(self, request: web.Request, api: str, body: Any) -> None:
        """Keep the call for the tests (``recorder.requests``) and show it on the panel."""
        self.recorder.request(api, request.path, dict(request.headers), body)
        show(request, api, body)

    async def answer_send(
        self,
        *,
        platform: str,
        recipient: str,
        success: dict[str, Any],
        send: bool,
    ) -> tuple[web.Response, int, dict[str, Any]]:
        """The answer to one call: a fault's, a script's or success (the panel's middleware
        records it with the request)."""
        answer = await self.faults.answer(platform, recipient, success, send=send)
        return respond(answer), answer[0], answer[1]


async def request_body(request: web.Request, api: str) -> dict[str, Any]:
    """A JSON object body, or a form's fields; anything else is the platform's refusal."""
    if request.content_type == "application/json":
        try:
            body = await request.json()
        except ValueError:
            raise Refused(api, "the body is not valid JSON", slack_error="invalid_json") from None
        return an_object(api, body)
    return dict(await request.post())
