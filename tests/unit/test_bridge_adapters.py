"""The bridge's signature checks and platform adapters, on the platforms' own samples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from chat.v1 import common_pb2 as c
from chat.v1 import ingest_service_pb2
from webhook_bridge.adapters import (
    MAX_NAME_CHARS,
    MAX_PARTS,
    MalformedPayloadError,
    Parsed,
    entry,
    messenger,
    set_time,
    slack,
    teams,
    text,
    time_of,
    token,
    whatsapp,
)
from webhook_bridge.signatures import meta_signature_valid, slack_signature_valid

#: The platforms' official samples (copied from the shared fixtures; SOURCES.json says where
#: each comes from).
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "platforms"


def sample(platform: str, name: str) -> Any:
    return json.loads((FIXTURES / platform / name).read_text())


def test_meta_signature_vectors() -> None:
    for name in ("signature_vector_xhub256_sdk_test.json",):
        vector = sample("whatsapp", name)
        body = vector["body"].encode()
        assert meta_signature_valid(vector["secret"], body, vector["header_value"])
        assert not meta_signature_valid(vector["secret"], body + b" ", vector["header_value"])
        assert not meta_signature_valid("other", body, vector["header_value"])
        assert not meta_signature_valid(vector["secret"], body, vector["expected_signature"])
        assert not meta_signature_valid(vector["secret"], body, None)
    escaped = sample("messenger", "signature_vector_escaped_unicode_SELF_COMPUTED.json")
    # Over the raw bytes with \\u escapes: re-serializing the JSON would break it.
    raw = escaped["body"].encode()
    assert meta_signature_valid(escaped["secret"], raw, escaped["header_value"])
    reserialized = json.dumps(json.loads(raw), ensure_ascii=False).encode()
    assert not meta_signature_valid(escaped["secret"], reserialized, escaped["header_value"])


def test_slack_signature_vector_and_replay_window() -> None:
    vector = sample("slack", "signature_vector_slash_command.json")
    body, stamp = vector["body"].encode(), vector["timestamp"]
    now = float(stamp) + 10
    check = {"timestamp": stamp, "signature": vector["expected_signature"]}
    assert slack_signature_valid(vector["secret"], body, now=now, **check)
    assert not slack_signature_valid(vector["secret"], body + b"x", now=now, **check)
    assert not slack_signature_valid(vector["secret"], body, now=float(stamp) + 301, **check)
    assert not slack_signature_valid(vector["secret"], body, now=float(stamp) - 301, **check)
    assert not slack_signature_valid(
        vector["secret"], body, now=now, timestamp="x", signature="v0="
    )


def kinds(parsed: Any) -> list[str]:
    result = []
    for event in parsed.events:
        kind = event.WhichOneof("kind")
        result.append(event.message.content.WhichOneof("kind") if kind == "message" else kind)
    return result


@pytest.mark.parametrize(
    ("name", "expected", "ignored"),
    [
        ("webhook_text_message.json", ["text"], []),
        ("webhook_text_message_with_context_product_inquiry.json", ["text"], []),
        ("webhook_text_message_from_click_to_whatsapp_ad.json", ["text"], []),
        ("webhook_image_message.json", ["media"], []),
        ("webhook_document_message.json", ["media"], []),
        ("webhook_location_message.json", ["location"], []),
        ("webhook_button_message.json", ["interactive_reply"], []),
        ("webhook_interactive_button_reply_message.json", ["interactive_reply"], []),
        ("webhook_interactive_list_reply_message.json", ["interactive_reply"], []),
        ("webhook_interactive_button_reply_docs_example.json", ["interactive_reply"], []),
        ("webhook_contact_sharing_message.json", ["text"], []),
        ("webhook_status_sent.json", ["status"], []),
        ("webhook_status_failed_131049.json", ["status"], []),
        ("webhook_reaction_message.json", [], ["message:reaction"]),
        ("webhook_order_message.json", [], ["message:order"]),
        ("webhook_system_message.json", [], ["message:system"]),
        ("webhook_unsupported_message.json", [], ["message:unsupported"]),
        ("webhook_group_create_message.json", [], ["field:group_lifecycle_update"]),
    ],
)
def test_whatsapp_samples(name: str, expected: list[str], ignored: list[str]) -> None:
    parsed = whatsapp.parse(sample("whatsapp", name))
    assert kinds(parsed) == expected
    assert [i for i in parsed.ignored if not i.startswith("error")] == ignored
    for event in parsed.events:
        assert event.platform_event_id
        assert event.channel == c.CHANNEL_TYPE_WHATSAPP
        assert event.platform_user_id == "16505551234"
        assert event.HasField("event_time")


def test_whatsapp_details() -> None:
    [text] = whatsapp.parse(sample("whatsapp", "webhook_text_message.json")).events
    assert text.message.content.text.text
    assert text.platform_account_id  # the receiving phone number id
    assert text.user_display_name
    [image] = whatsapp.parse(sample("whatsapp", "webhook_image_message.json")).events
    assert image.message.content.media.platform_media_id
    assert image.message.content.media.mime_type.startswith("image/")
    [reply] = whatsapp.parse(
        sample("whatsapp", "webhook_interactive_list_reply_message.json")
    ).events
    assert reply.message.content.interactive_reply.selected_id
    assert reply.message.reply_to_platform_message_id.startswith("wamid.")
    [failed] = whatsapp.parse(sample("whatsapp", "webhook_status_failed_131049.json")).events
    assert failed.status.status == c.DELIVERY_STATUS_FAILED
    assert failed.status.error.code == "131049"
    assert failed.platform_event_id.endswith(":failed")
    [sent] = whatsapp.parse(sample("whatsapp", "webhook_status_sent.json")).events
    assert sent.platform_event_id.endswith(":sent")  # each status of a wamid is its own event


def test_whatsapp_batches_and_bad_shapes() -> None:
    one = sample("whatsapp", "webhook_text_message.json")
    status = sample("whatsapp", "webhook_status_sent.json")
    batch = {"object": "whatsapp_business_account", "entry": one["entry"] + status["entry"] * 2}
    assert kinds(whatsapp.parse(batch)) == ["text", "status", "status"]
    assert whatsapp.parse({"object": "page"}).ignored == ["object:page"]  # not ours: 200
    assert messenger.parse({"object": "instagram"}).ignored == ["object:instagram"]
    with pytest.raises(MalformedPayloadError):
        whatsapp.parse([1, 2])
    garbage = {"object": "whatsapp_business_account", "entry": [{"changes": "x"}, 7]}
    assert whatsapp.parse(garbage).events == []


def page(*items: dict[str, Any]) -> dict[str, Any]:
    return {"object": "page", "entry": [{"id": "PAGE", "time": 1, "messaging": list(items)}]}


def test_messenger_samples() -> None:
    quick = sample("messenger", "event_message_text_quick_reply.json")
    reply_to = sample("messenger", "event_message_reply_to.json")
    deliveries = sample("messenger", "event_message_deliveries.json")
    reads = sample("messenger", "event_message_reads.json")
    attachment = sample("messenger", "event_message_attachment_entry.json")
    attachment["messaging"][0]["message"]["attachments"][0]["type"] = "image"
    postback = sample("messenger", "event_messaging_postbacks_notification.json")["value"]
    postback["sender"] = {"id": "PSID-2"}
    echo = {**reply_to, "message": {**reply_to["message"], "is_echo": True, "mid": "m_echo"}}
    parsed = messenger.parse(
        {
            "object": "page",
            "entry": [
                {"id": "PAGE", "messaging": [quick, reply_to, deliveries, reads, postback, echo]},
                attachment,
            ],
        }
    )
    assert kinds(parsed) == [
        "interactive_reply",
        "text",
        "status",
        "status",
        "interactive_reply",
        "media",
    ]
    assert parsed.ignored == ["echo"]  # the page's own message is never answered
    assert parsed.events[0].message.content.interactive_reply.selected_id == (
        "<DEVELOPER_DEFINED_PAYLOAD>"
    )
    assert parsed.events[1].message.reply_to_platform_message_id.startswith("m_")
    delivered, read = parsed.events[2].status, parsed.events[3].status
    assert delivered.status == c.DELIVERY_STATUS_DELIVERED
    assert list(delivered.platform_message_ids) == ["mid.1458668856218:ed81099e15d3f4f233"]
    assert delivered.HasField("watermark_time")
    assert (read.status, list(read.platform_message_ids)) == (c.DELIVERY_STATUS_READ, [])
    assert read.watermark_time.ToMilliseconds() == 1458668856253
    assert parsed.events[5].message.content.media.platform_media_id == "<ATTACHMENT_URL>"


def test_slack_samples() -> None:
    [text] = slack.parse_event(sample("slack", "event_message_text.json")).events
    assert text.platform_event_id == "Ev111"
    assert (text.platform_user_id, text.channel_conversation_id) == ("W111", "C111")
    assert text.message.content.text.text == "Hello World!"
    files = slack.parse_event(sample("slack", "event_message_file_share_image.json"))
    assert kinds(files) in (["media"], ["text", "media"])
    media = files.events[-1].message.content.media
    assert (media.platform_media_id, media.mime_type) == ("F111", "image/png")
    bot = sample("slack", "event_message_text.json")
    bot["event"]["bot_id"] = "B1"
    assert slack.parse_event(bot).ignored == ["bot"]
    limited = slack.parse_event(sample("slack", "event_app_rate_limited.json"))
    assert (limited.events, limited.ignored) == ([], ["type:app_rate_limited"])
    [click] = slack.parse_interaction(
        sample("slack", "interactivity_block_actions_button.json")
    ).events
    choice = click.message.content.interactive_reply
    assert (choice.selected_id, choice.title) == ("click_me_123", "Button")
    assert click.channel_conversation_id == "C111"


def test_teams_samples() -> None:
    [message] = teams.parse(sample("teams", "activity_message_text_personal.json")).events
    assert message.platform_event_id == "1485983408511"
    assert message.message.content.text.text.startswith("Hello Teams TestBot")
    assert message.service_url == "https://smba.trafficmanager.net/amer/"
    assert message.channel_conversation_id.startswith("a:")
    assert message.user_display_name == "Megan Bowen"
    receipt = sample("teams", "activity_event_read_receipt_CONSTRUCTED.json")
    receipt["from"] = {"id": "29:user"}
    [read] = teams.parse(receipt).events
    assert (read.status.status, list(read.status.platform_message_ids)) == (
        c.DELIVERY_STATUS_READ,
        ["10101010"],
    )
    typing = sample("teams", "activity_typing_CONSTRUCTED.json")
    typing["from"] = {"id": "29:user"}
    assert kinds(teams.parse(typing)) == ["typing"]
    reaction = teams.parse(sample("teams", "activity_message_reaction_added.json"))
    assert (reaction.events, reaction.ignored) == ([], ["activity:messageReaction"])
    update = teams.parse(sample("teams", "activity_conversation_update_channel_created.json"))
    assert update.ignored == ["activity:conversationUpdate"]
    card = {
        "type": "invoke",
        "name": "adaptiveCard/action",
        "id": "inv-1",
        "from": {"id": "29:user"},
        "conversation": {"id": "a:1"},
        "value": {"action": {"type": "Action.Execute", "verb": "approve", "title": "Approve"}},
    }
    [choice] = teams.parse(card).events
    assert choice.message.content.interactive_reply.selected_id == "approve"
    mention = {
        "type": "message",
        "id": "m-2",
        "from": {"id": "29:user"},
        "conversation": {"id": "19:x@thread.tacv2"},
        "text": "<at>Bot</at> hello",
    }
    assert teams.parse(mention).events[0].message.content.text.text == "hello"


def test_text_replaces_lone_surrogates_and_keeps_everything_else() -> None:
    assert text("caf\ud800 \udfff!") == "caf\ufffd \ufffd!"
    assert text(json.loads('"\\ud83d\\ude00 ok"')) == "\U0001f600 ok"  # a pair is one character
    assert text("plain") == "plain"
    for other in (None, 5, True, ["a"], {"a": "b"}):
        assert text(other) == ""


@pytest.mark.parametrize(
    "value",
    [int("9" * 400), -int("9" * 400), 1e400, float("nan"), "NaN", "1e400", "x", None, True, [1]],
)
def test_odd_times_are_no_time(value: object) -> None:
    assert time_of(value) is None
    assert time_of(value, per_second=1000) is None
    event = ingest_service_pb2.InboundEvent()
    set_time(event, value, per_second=1000)
    assert not event.HasField("event_time")


def test_times_in_seconds_and_milliseconds() -> None:
    assert time_of(1596183880) == time_of("1596183880.000000") == time_of(1596183880000, 1000)
    stamp_ = time_of("1596183880.5")
    assert stamp_ is not None
    assert (stamp_.seconds, stamp_.nanos) == (1596183880, 500_000_000)
    assert token(int("9" * 400)) == "9" * 400
    assert token(True) == token(None) == token([1]) == ""
    assert token("a\ud800") == "a\ufffd"


def test_a_bad_entry_is_dropped_whole_and_the_batch_goes_on() -> None:
    parsed = Parsed()
    with entry(parsed, "message") as own:
        own.events.append(ingest_service_pb2.InboundEvent(platform_event_id="kept"))
    with entry(parsed, "message") as own:
        own.events.append(ingest_service_pb2.InboundEvent(platform_event_id="half"))
        own.ignored.append("half-ignored")
        raise OverflowError  # a value the adapter's checks let through
    assert [e.platform_event_id for e in parsed.events] == ["kept"]
    assert parsed.ignored == []
    assert parsed.rejected == ["message:OverflowError"]
    with pytest.raises(KeyError), entry(parsed, "message"):  # a bug is no bad entry
        raise KeyError


def test_odd_values_in_every_adapter() -> None:
    """A 400-digit Messenger timestamp (once an OverflowError) and the like."""
    item = sample("messenger", "event_message_reply_to.json")
    item["timestamp"] = int("9" * 400)
    item["message"]["text"] = "a\ud800"
    parsed = messenger.parse(page(item))
    [event] = parsed.events
    assert not event.HasField("event_time")
    assert event.message.content.text.text == "a\ufffd"
    receipt = sample("messenger", "event_message_deliveries.json")
    receipt["delivery"]["watermark"] = int("9" * 400)
    [event] = messenger.parse(page(receipt)).events
    assert not event.status.HasField("watermark_time")
    failed = sample("whatsapp", "webhook_status_failed_131049.json")
    status = failed["entry"][0]["changes"][0]["value"]["statuses"][0]
    status["errors"][0]["code"] = "\udfff"
    status["timestamp"] = float("inf")
    [event] = whatsapp.parse(failed).events
    assert event.status.error.code == "\ufffd"
    assert not event.HasField("event_time")


def test_a_message_of_more_parts_than_any_platform_sends_is_rejected_whole() -> None:
    """Each part becomes an event carrying the message's ids: 3 bytes of ``{}`` each would
    multiply a small body into thousands of events."""
    event = sample("slack", "event_message_file_share_image.json")
    event["type"] = "event_callback"
    event["event_id"] = "Ev1"
    event["event"].setdefault("user", "U1")
    event["event"]["files"] = [{"id": f"F{i}"} for i in range(MAX_PARTS - 1)]
    assert len(slack.parse_event(event).events) == MAX_PARTS  # the text is one
    event["event"]["files"].append({"id": "F-last"})
    parsed = slack.parse_event(event)
    assert (parsed.events, parsed.rejected) == ([], ["message:too-many-parts"])
    click = sample("slack", "interactivity_block_actions_button.json")
    click["actions"] = click["actions"] * (MAX_PARTS + 1)
    assert slack.parse_interaction(click).rejected == ["interaction:too-many-parts"]
    item = sample("messenger", "event_message_attachment_entry.json")["messaging"][0]
    item["message"]["attachments"] = item["message"]["attachments"] * (MAX_PARTS + 1)
    good = sample("messenger", "event_message_reply_to.json")
    parsed = messenger.parse(page(item, good))
    assert (len(parsed.events), parsed.rejected) == (1, ["message:too-many-parts"])
    activity = sample("teams", "activity_message_text_personal.json")
    image = {"contentType": "image/png", "contentUrl": "https://example.com/a.png"}
    activity["attachments"] = [image] * (MAX_PARTS + 1)
    assert teams.parse(activity).rejected == ["message:too-many-parts"]


def test_display_names_shared_by_a_batch_are_bounded() -> None:
    payload = sample("whatsapp", "webhook_text_message.json")
    payload["entry"][0]["changes"][0]["value"]["contacts"][0]["profile"]["name"] = "n" * 10000
    [event] = whatsapp.parse(payload).events
    assert event.user_display_name == "n" * MAX_NAME_CHARS
