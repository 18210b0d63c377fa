from __future__ import annotations

import pytest

from chat.v1 import common_pb2
from server.api.pages import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, decode_token, encode_token, page_size
from server.domain.errors import InvalidArgument
from server.services.responder import RuleBasedResponder

E = common_pb2


async def reply_to(content: common_pb2.Content, context: dict[str, object] | None = None) -> str:
    reply = await RuleBasedResponder().reply(
        tenant_id="acme",
        conversation=E.Conversation(id="c"),
        message=E.Message(content=content),
        context=context or {},
    )
    first = reply.contents[0]
    return first.text.text if first.HasField("text") else first.interactive.body


async def test_rules() -> None:
    assert await reply_to(E.Content(text=E.TextContent(text="Hello there"))) == (
        "Hello! How can I help you today?"
    )
    assert await reply_to(E.Content(text=E.TextContent(text="hi")), {"greeted": True}) == (
        "Hello again!"
    )
    assert await reply_to(E.Content(text=E.TextContent(text="help"))) == "What can I help you with?"
    assert "person" in await reply_to(E.Content(text=E.TextContent(text="talk to a human")))
    assert await reply_to(
        E.Content(location=E.LocationContent(latitude=1, longitude=2, name="Dam Square"))
    ) == ("Thanks, I have Dam Square.")
    assert await reply_to(
        E.Content(interactive_reply=E.InteractiveReply(selected_id="billing", title="Billing"))
    ) == ("You chose Billing.")


def test_page_sizes() -> None:
    assert page_size(0) == DEFAULT_PAGE_SIZE
    assert page_size(7) == 7
    assert page_size(10_000) == MAX_PAGE_SIZE
    with pytest.raises(InvalidArgument):
        page_size(-1)


def test_tokens_round_trip_and_are_bound_to_their_query() -> None:
    query = {"rpc": "ListMessages", "conversation": "c1", "newest_first": False}
    token = encode_token(query, {"seq": 50})
    assert decode_token(token, query) == {"seq": 50}
    assert decode_token("", query) is None
    for bad_query in ({**query, "conversation": "c2"}, {**query, "newest_first": True}):
        with pytest.raises(InvalidArgument):
            decode_token(token, bad_query)
    for garbage in ("!!!", "bm90IGpzb24", token[:-3]):
        with pytest.raises(InvalidArgument):
            decode_token(garbage, query)
