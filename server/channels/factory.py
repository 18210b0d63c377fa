"""The channel factory: one adapter per platform, registered once, looked up by channel."""

from __future__ import annotations

import aiohttp

from server.channels.base import Channel
from server.channels.messenger import MessengerChannel
from server.channels.slack import SlackChannel
from server.channels.teams import TeamsChannel
from server.channels.whatsapp import WhatsAppChannel
from server.settings import PlatformEndpoints


class ChannelFactory:
    """Adapters by channel type."""

    def __init__(self) -> None:
        self._channels: dict[int, Channel] = {}

    def register(self, channel: Channel) -> None:
        if channel.channel_type in self._channels:
            raise ValueError(f"channel {channel.channel_type} registered twice")
        self._channels[channel.channel_type] = channel

    def get(self, channel_type: int) -> Channel | None:
        return self._channels.get(channel_type)

    @classmethod
    def for_platforms(
        cls, *, http: aiohttp.ClientSession, endpoints: PlatformEndpoints
    ) -> ChannelFactory:
        """Every platform adapter, at the configured base URLs."""
        factory = cls()
        factory.register(
            WhatsAppChannel(
                http=http, base_url=endpoints.whatsapp_api_base, version=endpoints.graph_api_version
            )
        )
        factory.register(
            MessengerChannel(
                http=http,
                base_url=endpoints.messenger_api_base,
                version=endpoints.graph_api_version,
            )
        )
        factory.register(SlackChannel(http=http, base_url=endpoints.slack_api_base))
        factory.register(TeamsChannel(http=http, token_url=endpoints.teams_token_url))
        return factory
