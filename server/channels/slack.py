"""Slack Web API: POST {base}/api/chat.postMessage."""

from __future__ import annotations

import re
from typing import Any

import aiohttp

from chat.v1 import common_pb2
from server.channels.base import (
    HOLD_DESTINATION,
    Action,
    ChannelResponse,
    Outbound,
    call,
    content_problem,
    send_parts,
    transport_failure,
)
from server.channels.formatting import SLACK_ATOMS, media_label, split_text, to_slack
from server.domain.tenant import Tenant

TEXT_LIMIT = 4000
BUTTON_LIMIT = 25
_RECIPIENT = re.compile(r"^[CDGUW][A-Z0-9]{2,}$")
#: Conversations files can be shared in (a user id is not one).
_CHANNEL_ID = re.compile(r"^[CDG][A-Z0-9]{2,}$")
TRANSIENT_ERRORS = {"ratelimited", "service_unavailable", "request_timeout", "internal_error"}


class SlackChannel:
    """chat.postMessage with the tenant's bot token."""

    channel_type: int = common_pb2.CHANNEL_TYPE_SLACK

    def __init__(self, *, http: aiohttp.ClientSession, base_url: str) -> None:
        self._http = http
        self._base = base_url.rstrip("/")

    def validate_recipient(self, recipient_id: str) -> str:
        return "" if _RECIPIENT.match(recipient_id) else "a Slack channel or user id"

    def validate_config(self, tenant: Tenant) -> str:
        config = tenant.channels.slack
        return "" if config is not None and config.bot_token else "slack.bot_token is required"

    def format_message(self, outbound: Outbound) -> list[dict[str, Any]]:
        content = outbound.message.content
        kind = content.WhichOneof("kind")
        channel = outbound.recipient_id
        if kind == "text":
            return [
                {"channel": channel, "text": piece}
                for piece in split_text(to_slack(content.text.text), TEXT_LIMIT, SLACK_ATOMS)
            ]
        if kind == "location":
            location = content.location
            link = f"https://maps.google.com/?q={location.latitude},{location.longitude}"
            label = location.name or "Location"
            return [
                {
                    "channel": channel,
                    "text": f"<{link}|{to_slack(label)}> {location.address}".strip(),
                }
            ]
        if kind == "interactive":
            interactive = content.interactive
            choices = [(b.id or b.title, b.title, b.url) for b in interactive.buttons.buttons] + [
                (q.id or q.title, q.title, "") for q in interactive.quick_replies.quick_replies
            ]
            choices += [
                (row.id, row.title, "")
                for section in interactive.list.sections
                for row in section.rows
            ]
            if len(choices) > BUTTON_LIMIT:
                # Documented fallback: more choices than an actions block holds become a
                # numbered text list (links kept).
                lines = [
                    f"{n}. {to_slack(title)}" + (f" <{url}>" if url else "")
                    for n, (_, title, url) in enumerate(choices, 1)
                ]
                text = "\n".join([to_slack(interactive.body), *lines])
                return [
                    {"channel": channel, "text": piece}
                    for piece in split_text(text, TEXT_LIMIT, SLACK_ATOMS)
                ]
            elements = []
            for choice_id, title, url in choices:
                button: dict[str, Any] = {
                    "type": "button",
                    "text": {"type": "plain_text", "text": title[:75]},
                    "action_id": choice_id[:255],
                    "value": choice_id[:2000],
                }
                if url:
                    button["url"] = url
                elements.append(button)
            text = to_slack(interactive.body)
            blocks: list[dict[str, Any]] = [
                {"type": "section", "text": {"type": "mrkdwn", "text": text[:3000] or " "}}
            ]
            if elements:
                blocks.append({"type": "actions", "elements": elements})
            return [{"channel": channel, "text": text[:TEXT_LIMIT], "blocks": blocks}]
        if kind == "media":
            # What a direct message to a user id gets (files go to channel ids only), and what
            # media without stored bytes get: the caption and the file's name, as text.
            return [{"channel": channel, "text": to_slack(media_label(content.media))}]
        return []

    async def _send_file(self, auth: dict[str, str], outbound: Outbound) -> ChannelResponse:
        """Slack's external upload: an upload URL for the file, the bytes to it, then the
        file shared in the channel with the caption as its comment. The file id names it."""
        media = outbound.message.content.media
        data = outbound.media or b""
        name = media.file_name or "file"
        reserved = await self._api(
            auth, "files.getUploadURLExternal", form={"filename": name, "length": str(len(data))}
        )
        if not reserved.success:
            return reserved
        upload_url, file_id = reserved.metadata["upload_url"], reserved.platform_message_id
        # The bytes travel encrypted, unless the API itself is plain HTTP (a local stand-in).
        schemes = ("https://", "http://") if self._base.startswith("http://") else ("https://",)
        if not upload_url.startswith(schemes):
            return ChannelResponse.failed("BAD_UPLOAD_URL", "no usable upload URL", retryable=True)
        sent = await call(self._http, "POST", upload_url, headers={}, data=data)
        failure = transport_failure(sent)
        if failure is not None:
            return failure
        if sent.status != 200:
            # Each attempt asks for a fresh upload URL; only a file too large is final.
            return ChannelResponse.failed(
                f"HTTP_{sent.status}",
                "the upload was refused",
                retryable=sent.status != 413,
                http_status=sent.status,
            )
        shared: dict[str, Any] = {
            "files": [{"id": file_id, "title": name}],
            "channel_id": outbound.recipient_id,
        }
        if media.caption:
            shared["initial_comment"] = to_slack(media.caption)[:TEXT_LIMIT]
        completed = await self._api(auth, "files.completeUploadExternal", body=shared)
        if not completed.success:
            return completed
        return ChannelResponse(success=True, platform_message_id=file_id)

    async def _api(
        self,
        auth: dict[str, str],
        method: str,
        *,
        form: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> ChannelResponse:
        """One Web API call; its file_id and upload_url, when it returns them."""
        answer = await call(
            self._http,
            "POST",
            f"{self._base}/api/{method}",
            headers=auth,
            json_body=body,
            data=form,
        )
        failure = transport_failure(answer)
        if failure is not None:
            return failure
        if not answer.body.get("ok"):
            error = str(answer.body.get("error", f"HTTP {answer.status}"))[:100]
            return ChannelResponse.failed(
                error, error, retryable=error in TRANSIENT_ERRORS, http_status=answer.status
            )
        return ChannelResponse(
            success=True,
            platform_message_id=str(answer.body.get("file_id", "")),
            metadata={"upload_url": str(answer.body.get("upload_url", ""))},
        )

    def validate_content(self, message: common_pb2.Message) -> str:
        return content_problem(message)

    async def health_check(self, tenant: Tenant) -> ChannelResponse:
        """auth.test: whether the bot token is valid."""
        config = tenant.channels.slack
        assert config is not None  # noqa: S101 - validate_config ran first
        return await self._api({"Authorization": f"Bearer {config.bot_token}"}, "auth.test")

    async def send_action(self, action: Action) -> ChannelResponse | None:  # noqa: ARG002
        """Slack's Web API has no typing indicator or read receipt for bots."""
        return None

    async def send_message(self, outbound: Outbound) -> ChannelResponse:
        config = outbound.tenant.channels.slack
        assert config is not None  # noqa: S101 - validate_config ran first
        auth = {"Authorization": f"Bearer {config.bot_token}"}
        if (
            outbound.message.content.WhichOneof("kind") == "media"
            and outbound.media is not None
            and _CHANNEL_ID.match(outbound.recipient_id)
        ):
            return await self._send_file(auth, outbound)

        async def send_one(body: dict[str, Any]) -> ChannelResponse:
            answer = await call(
                self._http,
                "POST",
                f"{self._base}/api/chat.postMessage",
                headers=auth,
                json_body=body,
            )
            failure = transport_failure(answer)
            if failure is not None:
                if failure.hold:
                    failure.hold = HOLD_DESTINATION  # chat.postMessage: about 1/s per channel
                return failure
            if not answer.body.get("ok"):
                error = str(answer.body.get("error", f"HTTP {answer.status}"))[:100]
                return ChannelResponse.failed(
                    error,
                    error,
                    retryable=error in TRANSIENT_ERRORS,
                    http_status=answer.status,
                    hold=HOLD_DESTINATION if error == "ratelimited" else "",
                )
            return ChannelResponse(success=True, platform_message_id=str(answer.body.get("ts", "")))

        return await send_parts(
            self.format_message(outbound), skip=outbound.skip_parts, send_one=send_one
        )
