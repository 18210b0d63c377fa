"""chatctl, the real command in a child process, against a real server: every command, the
output formats, the exit codes and one-line errors."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from devstack.stack import Endpoints
from tests.support.chat_client import JWT_SETTINGS, SECRET, TENANTS
from tests.support.chatctl import Chatctl, Result
from tests.support.seeding import seed_conversation
from tests.support.servers import RunningServer, tenants_file

StartServer = Callable[..., Awaitable[RunningServer]]


def one_line_error(result: Result, *words: str) -> None:
    """The failure a user sees: one line on stderr naming what happened, no traceback."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("chatctl: ")
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def dev_data_dir(tmp_path: Path) -> Path:
    """A data directory as `make run` leaves it: the dev secret the server trusts."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "dev-jwt-secret").write_text(SECRET)
    return data


@pytest.fixture
async def ctl(start_server: StartServer, tmp_path: Path) -> Chatctl:
    """chatctl pointed at a fresh server by CHAT_ADDRESS, with a token minted by chatctl
    itself from the dev secret, in CHAT_TOKEN."""
    server = await start_server(CHAT_TENANTS_FILE=tenants_file(tmp_path, TENANTS), **JWT_SETTINGS)
    base = Chatctl(
        {
            "CHAT_ADDRESS": server.target,
            "CHAT_DEV_DATA_DIR": str(dev_data_dir(tmp_path)),
            "XDG_CONFIG_HOME": str(tmp_path / "config"),
        }
    )
    minted = await base("token", "mint", "--tenant", "acme", "--lifetime", "1h")
    assert minted.code == 0, minted.stderr
    base.env["CHAT_TOKEN"] = minted.stdout.strip()
    return base


def user() -> str:
    return "ctl-" + uuid.uuid4().hex[:10]


async def test_send_then_list_show_search_close_in_every_format(ctl: Chatctl) -> None:
    someone = user()
    marker = uuid.uuid4().hex[:8]
    sent = await ctl("send", "--user", someone, f"hello {marker}")
    assert sent.code == 0, sent.stderr
    response = sent.json()  # piped: JSON by default, the whole response
    assert response["message"]["content"]["text"]["text"] == f"hello {marker}"
    assert response["replies"], "the bot's reply is printed"
    conversation = response["conversation"]["id"]

    table = await ctl(
        "send", "--user", someone, "--conversation", conversation, "help", "-o", "table"
    )
    assert table.code == 0, table.stderr
    assert "help" in table.stdout
    assert "inbound" in table.stdout
    assert "outbound" in table.stdout
    assert not table.stdout.lstrip().startswith("{")

    listed = await ctl("conversations", "list", "--user", someone, "-o", "csv")
    assert listed.code == 0, listed.stderr
    rows = list(csv.DictReader(io.StringIO(listed.stdout)))
    assert [(r["id"], r["user"], r["channel"], r["status"]) for r in rows] == [
        (conversation, someone, "web", "active")
    ]
    assert int(rows[0]["messages"]) == 4

    shown = await ctl("conversations", "show", conversation, "-o", "jsonl")
    assert shown.code == 0, shown.stderr
    messages = shown.jsonl()
    assert [int(m["sequence"]) for m in messages] == [1, 2, 3, 4]
    assert messages[0]["content"]["text"]["text"] == f"hello {marker}"

    found = await ctl("search", marker.upper(), "-o", "json")
    assert found.code == 0, found.stderr
    assert [m["content"]["text"]["text"] for m in found.json()] == [f"hello {marker}"]

    located = await ctl("send", "--user", someone, "--location", "52.37,4.89", "-o", "jsonl")
    assert located.code == 0, located.stderr
    assert located.jsonl()[0]["content"]["location"]["latitude"] == pytest.approx(52.37)

    closed = await ctl("conversations", "close", conversation, "--reason", "done", "-o", "json")
    assert closed.code == 0, closed.stderr
    assert closed.json()["conversation"]["status"] == "CONVERSATION_STATUS_CLOSED"
    again = await ctl(
        "conversations", "list", "--user", someone, "--status", "closed", "-o", "json"
    )
    assert [c["id"] for c in again.json()] == [conversation]


async def test_exit_codes_and_one_line_errors(ctl: Chatctl, tmp_path: Path) -> None:
    missing = await ctl("conversations", "show", "no-such-conversation")
    assert missing.code == 3
    one_line_error(missing, "NOT_FOUND", "request id")
    assert missing.stdout == ""

    invalid = await ctl("send", "--user", user(), "--location", "95,200")
    assert invalid.code == 2
    one_line_error(invalid, "INVALID_ARGUMENT", "latitude", "longitude", "request id")

    no_token = await ctl("conversations", "list", env={"CHAT_TOKEN": ""})
    assert no_token.code == 4
    one_line_error(no_token, "UNAUTHENTICATED")
    read_only = await ctl("token", "mint", "--scope", "chat:read")
    not_admin = await ctl("audit", "verify", env={"CHAT_TOKEN": read_only.stdout.strip()})
    assert not_admin.code == 4
    one_line_error(not_admin, "PERMISSION_DENIED")

    down = await ctl(
        "--deadline", "1", "conversations", "list", env={"CHAT_ADDRESS": "127.0.0.1:9"}
    )
    assert down.code == 5
    one_line_error(down, "UNAVAILABLE")

    usage = await ctl("send", "--user", user())
    assert usage.code == 2
    assert "nothing to send" in usage.stderr
    assert "Traceback" not in usage.stderr
    unknown = await ctl("conversations", "frobnicate")
    assert unknown.code == 2
    bad_time = await ctl("conversations", "list", "--since", "yesterday")
    assert bad_time.code == 2
    unreadable = await ctl("send", "--user", user(), "--file", str(tmp_path / "absent.png"))
    assert unreadable.code == 2
    one_line_error(unreadable, "absent.png")

    no_secret = await ctl("token", "mint", env={"CHAT_DEV_DATA_DIR": str(tmp_path / "nowhere")})
    assert no_secret.code == 1
    one_line_error(no_secret, "no development secret", "make run")
    assert no_secret.stdout == ""
