from __future__ import annotations

import math

import pytest

from chat.v1 import common_pb2
from server.domain.errors import InvalidArgument
from server.normalizers.text import normalize_text
from server.processors.content import ContentProcessor
from server.processors.location import process_location
from server.processors.media import MediaProcessor
from server.processors.text import TextProcessor
from tests.support.fakes import MemoryMediaStore, StaticFetcher

E = common_pb2


@pytest.fixture(scope="module")
def text() -> TextProcessor:
    return TextProcessor()


@pytest.fixture(scope="module")
def content(text: TextProcessor) -> ContentProcessor:
    return ContentProcessor(
        text=text, media=MediaProcessor(store=MemoryMediaStore(), fetcher=StaticFetcher())
    )


def test_normalization() -> None:
    result = normalize_text("  Cafe\u0301\x00 \t au\u200b lait \r\n\n\n\n  merci\x07  ")
    assert result.text == "Café au lait\n\nmerci"
    assert result.removed_characters == 3
    assert result.words == 4


def test_normalization_keeps_emoji_sequences() -> None:
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    assert normalize_text(f"hi {family}").text == f"hi {family}"


def test_entities_are_found_and_normalized(text: TextProcessor) -> None:
    body = (
        "Call +44 20 7946 0958, mail Ana.Lopez@Example.ORG, see https://shop.example/o/42). "
        "Pay €12,50 or 1,234.50 USD by 2026-12-01 or March 3, 2027."
    )
    found = {(e.type, e.normalized) for e in text.analyse(body).entities}
    assert found == {
        (E.ENTITY_TYPE_PHONE_NUMBER, "+442079460958"),
        (E.ENTITY_TYPE_EMAIL, "ana.lopez@example.org"),
        (E.ENTITY_TYPE_URL, "https://shop.example/o/42"),
        (E.ENTITY_TYPE_AMOUNT, "EUR 12.50"),
        (E.ENTITY_TYPE_AMOUNT, "USD 1234.50"),
        (E.ENTITY_TYPE_DATE, "2026-12-01"),
        (E.ENTITY_TYPE_DATE, "2027-03-03"),
    }
    for entity in text.analyse(body).entities:
        assert body[entity.start : entity.end] == entity.text


def test_impossible_dates_and_national_numbers_without_a_region(text: TextProcessor) -> None:
    found = text.analyse("on 2026-02-30 call 020 7946 0958").entities
    assert [e.type for e in found] == []
    with_region = TextProcessor(default_phone_region="GB").analyse("call 020 7946 0958")
    assert [e.normalized for e in with_region.entities] == ["+442079460958"]


@pytest.mark.parametrize(
    ("body", "language"),
    [
        ("Bonjour, je voudrais réserver une table pour deux personnes", "fr"),
        ("Ich möchte meine Bestellung bitte stornieren lassen", "de"),
        ("Hola, quiero cambiar mi reserva para mañana por la tarde", "es"),
        ("ok", ""),  # too short to tell
    ],
)
def test_language(text: TextProcessor, body: str, language: str) -> None:
    assert text.analyse(body).language == language


def test_location_ranges() -> None:
    ok, violations = process_location(
        E.LocationContent(latitude=52.37, longitude=4.89, name=" Dam \x00Square "),
        "content.location",
    )
    assert violations == []
    assert ok.name == "Dam Square"
    _, violations = process_location(
        E.LocationContent(latitude=91, longitude=math.nan), "content.location"
    )
    assert [v.field for v in violations] == [
        "content.location.latitude",
        "content.location.longitude",
    ]


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (E.Content(), "content"),
        (E.Content(text=E.TextContent(text=" \x00\u200b ")), "content.text.text"),
        (E.Content(text=E.TextContent(text="x" * 4097)), "content.text.text"),
        (E.Content(location=E.LocationContent(latitude=-91)), "content.location.latitude"),
        (
            E.Content(interactive_reply=E.InteractiveReply()),
            "content.interactive_reply.selected_id",
        ),
        (
            E.Content(interactive=E.InteractiveContent(body="pick")),
            "content.interactive",
        ),
    ],
)
async def test_invalid_content_names_the_field(
    content: ContentProcessor, message: common_pb2.Content, field: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await content.process_inbound("t1", message, channel=E.CHANNEL_TYPE_WEB, field="content")
    assert [v.field for v in caught.value.field_violations] == [field]


async def test_processed_text(content: ContentProcessor) -> None:
    processed = await content.process_inbound(
        "t1",
        E.Content(text=E.TextContent(text="Mail  ME at A@B.io")),
        channel=E.CHANNEL_TYPE_WEB,
        field="content",
    )
    assert processed.content.text.text == "Mail ME at A@B.io"
    assert processed.type == E.MESSAGE_TYPE_TEXT
    assert processed.search_text == "mail me at a@b.io"
    assert [e.normalized for e in processed.entities] == ["a@b.io"]
