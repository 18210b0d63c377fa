"""Media that arrived as a platform reference (a WhatsApp media id, a Slack file id, a
Messenger or Teams attachment URL): fetched with the tenant's credentials when the message is
processed (after the platform was acknowledged), then checked and stored like any upload.

A fetch that fails, or bytes the media processor refuses, leave the message as it was (the
reference kept) with the reason in its metadata: the user did send it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import quote

import structlog

from chat.v1 import common_pb2
from server.channels.base import ChannelResponse
from server.domain.errors import DomainError
from server.domain.tenant import Tenant, TenantLookup
from server.processors.fetch import HttpMediaFetcher
from server.processors.media import MAX_MEDIA_BYTES, MediaFetchError, MediaProcessor
from server.settings import PlatformEndpoints

log = structlog.get_logger("chat.media")


class PlatformMediaSource:
    """Downloads a platform's media by its reference."""

    def __init__(
        self,
        *,
        fetcher: HttpMediaFetcher,
        endpoints: PlatformEndpoints,
        teams_token: Callable[[Tenant], Awaitable[str | ChannelResponse]] | None = None,
    ) -> None:
        self._fetcher = fetcher
        self._endpoints = endpoints
        self._teams_token = teams_token

    async def fetch(
        self, tenant: Tenant, channel: int, reference: str, *, service_url: str = ""
    ) -> bytes:
        """The bytes; MediaFetchError when they cannot be had. ``service_url``: the Teams
        conversation's verified serviceUrl (its attachments are fetched with the bot token)."""
        channels = tenant.channels
        if channel == common_pb2.CHANNEL_TYPE_WHATSAPP and channels.whatsapp:
            # GET /{media-id} gives a short-lived URL, fetched with the same token.
            auth = {"Authorization": f"Bearer {channels.whatsapp.access_token}"}
            base = self._endpoints.whatsapp_api_base.rstrip("/")
            lookup = f"{base}/{self._endpoints.graph_api_version}/{quote(reference, safe='')}"
            url = (await self._fetcher.json(lookup, headers=auth)).get("url")
            if not isinstance(url, str) or not url:
                raise MediaFetchError("the Graph API gave no media URL")
            return await self._fetcher.fetch(url, max_bytes=MAX_MEDIA_BYTES, headers=auth)
        if channel == common_pb2.CHANNEL_TYPE_SLACK and channels.slack:
            auth = {"Authorization": f"Bearer {channels.slack.bot_token}"}
            base = self._endpoints.slack_api_base.rstrip("/")
            info = await self._fetcher.json(
                f"{base}/api/files.info?file={quote(reference, safe='')}", headers=auth
            )
            file = info.get("file") if info.get("ok") else None
            url = file.get("url_private_download") if isinstance(file, dict) else None
            if not isinstance(url, str) or not url:
                raise MediaFetchError(f"files.info failed: {info.get('error', 'no file')}")
            return await self._fetcher.fetch(url, max_bytes=MAX_MEDIA_BYTES, headers=auth)
        if (
            channel == common_pb2.CHANNEL_TYPE_TEAMS
            and channels.teams
            and self._teams_token is not None
            and service_url
            and reference.startswith(service_url.rstrip("/") + "/")
        ):
            # An image pasted into Teams is served by the Bot Connector at the serviceUrl the
            # activity was verified for, to the bot's token; the token goes nowhere else.
            token = await self._teams_token(tenant)
            if not isinstance(token, str):
                reason = token.error.message if token.error else "refused"
                raise MediaFetchError(f"no Bot Framework token: {reason}")
            auth = {"Authorization": f"Bearer {token}"}
            return await self._fetcher.fetch(reference, max_bytes=MAX_MEDIA_BYTES, headers=auth)
        if reference.startswith(("https://", "http://")):
            # Messenger attachment URLs and Teams file download URLs carry their own
            # authorization.
            return await self._fetcher.fetch(reference, max_bytes=MAX_MEDIA_BYTES)
        raise MediaFetchError("no way to fetch this reference for the channel")


class InboundMediaResolver:
    """Replaces a message's platform media reference with stored, checked media."""

    def __init__(
        self,
        *,
        source: PlatformMediaSource,
        media: MediaProcessor,
        tenants: TenantLookup,
    ) -> None:
        self._source = source
        self._media = media
        self._tenants = tenants

    async def resolve(self, tenant_id: str, message: common_pb2.Message) -> bool:
        """Fetch and store the message's media in place; True when the message changed."""
        content = message.content
        if content.WhichOneof("kind") != "media" or content.media.WhichOneof("source") != (
            "platform_media_id"
        ):
            return False
        tenant = self._tenants.get(tenant_id)
        if tenant is None:
            return False
        reference = content.media.platform_media_id
        try:
            data = await self._source.fetch(
                tenant,
                message.channel,
                reference,
                service_url=message.metadata.get("service_url", ""),
            )
            processed = await self._media.process(
                tenant_id,
                common_pb2.MediaContent(
                    data=data,
                    mime_type="" if "*" in content.media.mime_type else content.media.mime_type,
                    caption=content.media.caption,
                    file_name=content.media.file_name,
                ),
                channel=message.channel,
                field="media",
            )
        except MediaFetchError as exc:
            log.warning("platform media not fetched", message_id=message.id, error=str(exc))
            message.metadata["media_fetch_error"] = str(exc)[:500]
            return True
        except DomainError as exc:
            log.warning("platform media refused", message_id=message.id, error=str(exc))
            message.metadata["media_rejected"] = str(exc)[:500]
            return True
        message.content.media.CopyFrom(processed.content)
        message.type = processed.type
        message.metadata["platform_media_id"] = reference[:2048]
        message.metadata["media_verified"] = "true"
        return True
