"""WhatsApp webhooks that batch many statuses or many messages, up to the bridge's body limit."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

#: The bridge's default CHAT_BRIDGE_MAX_BODY_BYTES.
MAX_BODY = 1024 * 1024
PHONE_NUMBER_ID = "106540352242922"


def webhook(value: dict[str, Any]) -> dict[str, Any]:
    """A WhatsApp webhook with one change carrying ``value`` (its messages or statuses)."""
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "102290129340398",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15550783881",
                                "phone_number_id": PHONE_NUMBER_ID,
                            },
                            **value,
                        },
                    }
                ],
            }
        ],
    }


def fill(
    make: Callable[[int], dict[str, Any]], count: int | None, around: dict[str, Any]
) -> list[dict[str, Any]]:
    """``count`` items, or as many as fit in a body of MAX_BODY with the webhook ``around``
    them."""
    if count is not None:
        return [make(n) for n in range(count)]
    items: list[dict[str, Any]] = []
    size = len(json.dumps(around))
    while True:
        item = make(len(items))
        size += len(json.dumps(item)) + 2
        if size > MAX_BODY:
            return items
        items.append(item)


def statuses(count: int | None) -> tuple[dict[str, Any], list[str]]:
    """A webhook of ``count`` statuses (or a body-limit's worth), each for a message of ours
    not recorded yet; their message ids."""
    batch = uuid.uuid4().hex[:8]

    def status(n: int) -> dict[str, Any]:
        return {
            "id": f"wamid.{batch}{n:06d}",
            "status": "delivered",
            "timestamp": "1750030073",
            "recipient_id": f"1650{n % 500:07d}",
        }

    items = fill(status, count, webhook({"statuses": []}))
    return webhook({"statuses": items}), [item["id"] for item in items]


def messages(count: int | None, users: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A webhook of ``count`` text messages (or a body-limit's worth) from ``users`` users,
    each user's numbered in order; the messages."""
    batch = uuid.uuid4().hex[:8]
    senders = [f"1{batch[:4]}{n:06d}" for n in range(users)]

    def message(n: int) -> dict[str, Any]:
        return {
            "from": senders[n % users],
            "id": f"wamid.{batch}{n:06d}",
            "timestamp": "1750030073",
            "text": {"body": f"m{n // users}"},
            "type": "text",
        }

    contacts = [{"profile": {"name": "Ana"}, "wa_id": sender} for sender in senders]
    items = fill(message, count, webhook({"contacts": contacts, "messages": []}))
    return webhook({"contacts": contacts, "messages": items}), items
