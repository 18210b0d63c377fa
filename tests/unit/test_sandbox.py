"""The sandbox's pure parts: which platforms `make run` points at it, and how a send is
previewed in each platform's form (the payloads are the channels' own)."""

from __future__ import annotations

from pathlib import Path

from chat.v1 import common_pb2 as c
from devstack.sandbox import messenger, slack, teams, whatsapp
from devstack.sandbox.chats import MAX_CHATS, MAX_ENTRIES, Chats
from devstack.sandbox.media import MAX_BYTES, MAX_FILES, MAX_TOTAL_BYTES, MediaStore
from devstack.sandbox.plan import EXAMPLE_TENANTS, plan
from devstack.sandbox.recorder import Recorder
from server.channels.base import Outbound
from server.channels.messenger import MessengerChannel
from server.channels.slack import SlackChannel
from server.channels.teams import TeamsChannel
from server.channels.whatsapp import WhatsAppChannel
from server.repositories.tenants_file import load_tenants

ALL = ("whatsapp", "messenger", "slack", "teams")


def test_the_example_tenant_gets_the_sandbox_for_every_platform() -> None:
    chosen = plan({}, EXAMPLE_TENANTS, "acme")
    assert chosen.platforms == ALL
    assert chosen.real == {}
    env = chosen.service_env("http://127.0.0.1:8090")
    assert env == {
        "CHAT_WHATSAPP_API_BASE": "http://127.0.0.1:8090",
        "CHAT_MESSENGER_API_BASE": "http://127.0.0.1:8090",
        "CHAT_SLACK_API_BASE": "http://127.0.0.1:8090",
        "CHAT_TEAMS_TOKEN_URL": "http://127.0.0.1:8090/token",
        "CHAT_TEAMS_OPENID_METADATA_URL": "http://127.0.0.1:8090/botframework/openid",
        "CHAT_MEDIA_FETCH_ALLOW_PRIVATE": "true",
    }


def test_a_set_base_url_or_real_credentials_keep_a_platform_real(tmp_path: Path) -> None:
    own = tmp_path / "tenants.yaml"
    own.write_text(EXAMPLE_TENANTS.read_text().replace("xoxb-dev-bot-token", "${SLACK_BOT_TOKEN}"))
    env = {"CHAT_WHATSAPP_API_BASE": "https://graph.example", "SLACK_BOT_TOKEN": "xoxb-real"}
    chosen = plan(env, own, "acme")
    assert chosen.platforms == ("messenger", "teams")
    assert chosen.real == {
        "whatsapp": "CHAT_WHATSAPP_API_BASE is set",
        "slack": "tenant acme has its own slack credentials",
    }
    assert "CHAT_WHATSAPP_API_BASE" not in chosen.service_env("http://sandbox")


def test_the_sandbox_can_be_turned_off() -> None:
    chosen = plan({"CHAT_DEV_SANDBOX": "0"}, EXAMPLE_TENANTS, "acme")
    assert chosen.platforms == ()
    assert set(chosen.real) == set(ALL)
    assert chosen.service_env("http://sandbox") == {}


def menu() -> c.Message:
    quick = [
        c.QuickReply(id="orders", title="My orders"),
        c.QuickReply(id="billing", title="Billing"),
    ]
    interactive = c.InteractiveContent(
        body="What can I help you with?", quick_replies=c.QuickReplyGroup(quick_replies=quick)
    )
    return c.Message(id="m-1", content=c.Content(interactive=interactive))


def test_each_platforms_menu_is_previewed_with_its_choices() -> None:
    tenant = load_tenants(EXAMPLE_TENANTS)["acme"]
    previews = {}
    for name, channel, module, recipient in (
        ("whatsapp", WhatsAppChannel(http=None, base_url="", version="v23.0"), whatsapp, "155501"),  # type: ignore[arg-type]
        ("messenger", MessengerChannel(http=None, base_url="", version="v23.0"), messenger, "71"),  # type: ignore[arg-type]
        ("slack", SlackChannel(http=None, base_url=""), slack, "D1"),  # type: ignore[arg-type]
        ("teams", TeamsChannel(http=None, token_url=""), teams, "a:1"),  # type: ignore[arg-type]
    ):
        [body] = channel.format_message(
            Outbound(tenant=tenant, message=menu(), recipient_id=recipient)
        )
        previews[name] = module.view(body)
    assert {name: preview["form"] for name, preview in previews.items()} == {
        "whatsapp": "reply buttons",
        "messenger": "quick replies",
        "slack": "blocks",
        "teams": "Adaptive Card",
    }
    for preview in previews.values():
        assert "What can I help you with?" in preview["text"]
        assert [(ch["id"], ch["title"]) for ch in preview["choices"]] == [
            ("orders", "My orders"),
            ("billing", "Billing"),
        ]


def test_a_long_running_sandbox_keeps_the_newest_requests_and_files() -> None:
    recorder = Recorder(max_requests=2)
    for n in range(3):
        recorder.request("whatsapp", f"/v23.0/1/messages#{n}", {}, {"to": str(n)})
    assert [path for path, _, _ in recorder.requests] == [
        "whatsapp /v23.0/1/messages#1",
        "whatsapp /v23.0/1/messages#2",
    ]
    assert len(recorder.times) == 2
    store = MediaStore()
    first = store.put(b"x", "image/png", "first.png")
    for _ in range(MAX_FILES):
        store.put(b"y", "image/png", "later.png")
    assert first.media_id not in store.files
    assert len(store.files) == MAX_FILES


def test_another_tenants_real_credentials_keep_the_platform_real(tmp_path: Path) -> None:
    # The API bases are the whole service's: playing WhatsApp for acme would send initech's
    # real messages to the sandbox.
    own = tmp_path / "tenants.yaml"
    own.write_text(
        EXAMPLE_TENANTS.read_text()
        + """
  - id: initech
    channels:
      whatsapp:
        verify_token: v
        app_secret: s
        access_token: ${INITECH_WA_TOKEN}
        phone_number_id: "300000000000003"
"""
    )
    chosen = plan({"INITECH_WA_TOKEN": "EAAreal"}, own, "acme")
    assert chosen.platforms == ("messenger", "slack", "teams")
    assert chosen.real == {"whatsapp": "tenant initech has its own whatsapp credentials"}
    assert "CHAT_WHATSAPP_API_BASE" not in chosen.service_env("http://sandbox")
    # A tenant with no platform credentials at all (the example's globex) changes nothing.
    assert plan({}, EXAMPLE_TENANTS, "globex").platforms == ALL


def test_the_chats_keep_the_newest_entries_and_chats_and_find_a_message_by_its_id() -> None:
    chats = Chats()
    for n in range(MAX_ENTRIES + 5):
        chats.add("whatsapp", "1555", "bot", str(n), platform_id=f"wamid.{n}")
    kept = chats.entries["whatsapp:1555"]
    assert len(kept) == MAX_ENTRIES
    assert kept[0].text == "5"
    assert chats.find("whatsapp", "wamid.0") is None  # dropped with its entry
    found = chats.find("whatsapp", f"wamid.{MAX_ENTRIES + 4}")
    assert found is not None
    assert found[0] == "1555"
    chats.mark("whatsapp", f"wamid.{MAX_ENTRIES + 4}", "read")
    chats.mark("whatsapp", f"wamid.{MAX_ENTRIES + 4}", "delivered")  # never backwards
    assert kept[-1].status == "read"
    for n in range(MAX_CHATS + 1):
        chats.add("slack", f"D{n}", "user", "hi", platform_id=f"{n}.0")
    assert len(chats.entries) == MAX_CHATS
    assert "whatsapp:1555" not in chats.entries  # the least recently active went first
    assert chats.find("whatsapp", f"wamid.{MAX_ENTRIES + 4}") is None


def test_the_media_store_is_bounded_by_its_bytes_too() -> None:
    store = MediaStore()
    big = b"x" * MAX_BYTES
    for _ in range(MAX_TOTAL_BYTES // MAX_BYTES + 3):
        store.put(big, "image/png", "big.png")
    assert store.total_bytes <= MAX_TOTAL_BYTES
    assert store.total_bytes == sum(len(f.data) for f in store.files.values())
    assert len(store.files) == MAX_TOTAL_BYTES // MAX_BYTES
