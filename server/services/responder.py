"""Reply generation. The built-in responder answers by simple rules; an external
ResponderService (over gRPC) can replace it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from chat.v1 import common_pb2

RESPONDER_ID = "bot"


@dataclass(frozen=True, slots=True)
class Reply:
    """What a responder answers: contents to send and context keys to set."""

    contents: tuple[common_pb2.Content, ...]
    context_updates: dict[str, Any] = field(default_factory=dict)


class Responder(Protocol):
    """Generates the replies to one inbound message."""

    async def reply(
        self,
        *,
        tenant_id: str,
        conversation: common_pb2.Conversation,
        message: common_pb2.Message,
        context: dict[str, Any],
    ) -> Reply:
        """The replies to ``message``."""
        ...


_GREETING = re.compile(
    r"^\s*(hi|hello|hey|hola|bonjour|hallo|good (morning|afternoon|evening))\b", re.I
)
_HELP = re.compile(r"\b(help|menu|options)\b", re.I)
_HUMAN = re.compile(r"\b(human|agent|person|operator)\b", re.I)
_THANKS = re.compile(r"\b(thanks|thank you|cheers)\b", re.I)


def _text(text: str) -> common_pb2.Content:
    return common_pb2.Content(text=common_pb2.TextContent(text=text))


def _menu() -> common_pb2.Content:
    return common_pb2.Content(
        interactive=common_pb2.InteractiveContent(
            body="What can I help you with?",
            quick_replies=common_pb2.QuickReplyGroup(
                quick_replies=[
                    common_pb2.QuickReply(id="orders", title="My orders"),
                    common_pb2.QuickReply(id="billing", title="Billing"),
                    common_pb2.QuickReply(id="agent", title="Talk to a person"),
                ]
            ),
        )
    )


class RuleBasedResponder:
    """The default responder: greetings, a help menu, hand-off requests, locations, choices."""

    async def reply(  # noqa: PLR0911 - one return per rule reads as the list of rules
        self,
        *,
        tenant_id: str,  # noqa: ARG002 - the rules are the same for every tenant
        conversation: common_pb2.Conversation,  # noqa: ARG002 - nor do they depend on history
        message: common_pb2.Message,
        context: dict[str, Any],
    ) -> Reply:
        """Answer by the first rule that matches."""
        content = message.content
        kind = content.WhichOneof("kind")
        if kind == "location":
            place = content.location.name or content.location.address or "your location"
            return Reply((_text(f"Thanks, I have {place}."),), {"last_intent": "location"})
        if kind == "interactive_reply":
            choice = content.interactive_reply.title or content.interactive_reply.selected_id
            if content.interactive_reply.selected_id == "agent":
                return Reply((_text("I'll connect you with a person shortly."),), {"handoff": True})
            return Reply((_text(f"You chose {choice}."),), {"last_choice": choice})
        text = content.text.text
        if _HUMAN.search(text):
            return Reply((_text("I'll connect you with a person shortly."),), {"handoff": True})
        if _HELP.search(text):
            return Reply((_menu(),), {"last_intent": "help"})
        if _GREETING.search(text):
            greeting = (
                "Hello again!" if context.get("greeted") else "Hello! How can I help you today?"
            )
            return Reply((_text(greeting),), {"greeted": True, "last_intent": "greeting"})
        if _THANKS.search(text):
            return Reply((_text("You're welcome!"),), {"last_intent": "thanks"})
        return Reply(
            (_text("Thanks for your message. Type 'help' to see what I can do."),),
            {"last_intent": "unknown"},
        )
