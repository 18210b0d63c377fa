"""chatctl, the real command in a child process, against a real server: every command, the
output formats, the exit codes and one-line errors."""

from __future__ import annotations

import asyncio
import base64
import csv
import datetime as dt
import io
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pymongo import AsyncMongoClient

from chat.v1 import common_pb2 as c
from devstack.processes import free_port
from devstack.stack import Endpoints
from server.repositories.analytics import MongoAnalytics
from server.repositories.audit import AuditRecord, MongoAuditLog
from server.repositories.mongo import Transactions
from tests.support.bridge import Bridge
from tests.support.chat_client import JWT_SETTINGS, SECRET, TENANTS
from tests.support.chatctl import Chatctl, Result
from tests.support.seeding import seed_conversation
from tests.support.servers import RunningServer, ServerStarter, tenants_file
from tests.support.stand_ins import Mongo, Platforms, sent, status_of, whatsapp_reply
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import eventually

StartServer = ServerStarter


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
    return await chatctl_for(start_server, tmp_path)


async def chatctl_for(
    start_server: StartServer, tmp_path: Path, tenant: str = "acme", **settings: str
) -> Chatctl:
    """chatctl for a new server with these settings, as ``tenant``."""
    server = await start_server(
        CHAT_TENANTS_FILE=tenants_file(tmp_path, TENANTS), **JWT_SETTINGS, **settings
    )
    base = Chatctl(
        {
            "CHAT_ADDRESS": server.target,
            "CHAT_DEV_DATA_DIR": str(dev_data_dir(tmp_path)),
            "XDG_CONFIG_HOME": str(tmp_path / "config"),
        }
    )
    minted = await base("token", "mint", "--tenant", tenant, "--lifetime", "1h")
    assert minted.code == 0, minted.stderr
    base.env["CHAT_TOKEN"] = minted.stdout.strip()
    return base


def user() -> str:
    return "ctl-" + uuid.uuid4().hex[:10]


async def test_send_then_list_show_search_close_in_every_format(
    ctl: Chatctl, tmp_path: Path
) -> None:
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

    picture = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), "teal").save(picture)
    media = await ctl("send", "--user", someone, "--file", str(picture), "a caption", "-o", "json")
    assert media.code == 0, media.stderr
    stored = media.json()["message"]["content"]["media"]
    assert (stored["mimeType"], stored["caption"], stored["width"]) == (
        "image/png",
        "a caption",
        40,
    )
    assert "mediaId" in stored  # the bytes were stored; the id comes back, not the bytes

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
    one_line_error(down, "cannot reach the server at 127.0.0.1:9", "UNAVAILABLE")

    usage = await ctl("send", "--user", user())
    assert usage.code == 2
    assert "nothing to send" in usage.stderr
    assert "Traceback" not in usage.stderr
    both = await ctl("send", "--user", user(), "--location", "1,2", "text too")
    assert both.code == 2
    one_line_error(both, "not with --location")
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


async def test_tail_prints_a_message_sent_by_another_call(ctl: Chatctl) -> None:
    someone = user()
    first = await ctl("send", "--user", someone, "first")
    conversation = first.json()["conversation"]["id"]
    tail_args = (
        "conversations",
        "tail",
        conversation,
        "--from-start",
        "--count",
        "4",
        "-o",
        "jsonl",
    )
    async with ctl.running(*tail_args) as tail:
        assert tail.stdout is not None
        replayed = [json.loads(await asyncio.wait_for(tail.stdout.readline(), 20)) for _ in "ab"]
        assert [event["message"]["sequence"] for event in replayed] == ["1", "2"]

        second = await ctl("send", "--user", someone, "--conversation", conversation, "second")
        assert second.code == 0, second.stderr
        assert await asyncio.wait_for(tail.wait(), 20) == 0  # --count 4: done
        rest = [json.loads(line) for line in (await tail.stdout.read()).decode().splitlines()]
    messages = [event["message"] for event in rest if "message" in event]
    assert [m["sequence"] for m in messages] == ["3", "4"]
    assert messages[0]["content"]["text"]["text"] == "second"
    assert messages[1]["direction"] == "MESSAGE_DIRECTION_OUTBOUND"


async def test_tail_stops_cleanly_on_ctrl_c(ctl: Chatctl) -> None:
    conversation = (await ctl("send", "--user", user(), "hi")).json()["conversation"]["id"]
    async with ctl.running("conversations", "tail", conversation, "--from-start") as tail:
        assert tail.stdout is not None
        assert await asyncio.wait_for(tail.stdout.readline(), 20)  # following by now
        tail.send_signal(2)  # SIGINT, as Ctrl-C sends
        assert await asyncio.wait_for(tail.wait(), 20) == 0
        assert tail.stderr is not None
        assert b"Traceback" not in await tail.stderr.read()


async def test_export_of_a_large_conversation_with_its_progress_bar_off_stdout(
    ctl: Chatctl, stack: Endpoints, tmp_path: Path
) -> None:
    conversation = await seed_conversation(stack, "acme", 3000)
    out = tmp_path / "exports" / "conversation.jsonl"
    out.parent.mkdir()

    # stderr on a terminal draws the bar; stdout, piped, holds only the JSON summary.
    result, terminal = await ctl.with_terminal_stderr("export", conversation, "--out", str(out))
    assert result.code == 0, terminal
    assert result.json() == {
        "file": str(out),
        "format": "jsonl",
        "messages": 3000,
        "bytes": out.stat().st_size,
    }
    assert "3000/3000" in terminal
    assert "exporting" in terminal
    assert f"{out.stat().st_size / 1000:.1f} kB" in terminal  # the bytes written
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [int(r["sequence"]) for r in records] == list(range(1, 3001))

    # Rerun, as CSV by --format: the file is replaced whole.
    out.write_text("stale\n")
    again = await ctl("export", conversation, "--out", str(out), "--format", "csv", "-o", "jsonl")
    assert again.code == 0, again.stderr
    assert again.jsonl()[0]["messages"] == 3000
    rows = list(csv.reader(io.StringIO(out.read_text())))
    assert len(rows) == 3001
    assert rows[0][:2] == ["id", "sequence"]

    # A failed export leaves the file as it was, and nothing beside it.
    before = out.read_bytes()
    missing = await ctl("export", "no-such-conversation", "--out", str(out))
    assert missing.code == 3
    one_line_error(missing, "NOT_FOUND")
    assert out.read_bytes() == before
    assert [p.name for p in out.parent.iterdir()] == ["conversation.jsonl"]

    guess = await ctl("export", conversation, "--out", str(tmp_path / "conversation.txt"))
    assert guess.code == 2
    one_line_error(guess, ".jsonl or .csv")


async def test_profiles_and_shell_completion(ctl: Chatctl, tmp_path: Path) -> None:
    config = tmp_path / "config" / "chatctl" / "config.toml"
    config.parent.mkdir(parents=True)
    token_file = tmp_path / "token"
    token_file.write_text(ctl.env["CHAT_TOKEN"] + "\n")
    config.write_text(
        'default = "dev"\n'
        f'[profiles.dev]\naddress = "{ctl.env["CHAT_ADDRESS"]}"\ntoken_file = "{token_file}"\n'
        '[profiles.down]\naddress = "127.0.0.1:9"\ntoken_env = "DOWN_TOKEN"\n'
    )
    no_env = {"CHAT_ADDRESS": "", "CHAT_TOKEN": ""}
    listed = await ctl("conversations", "list", "--limit", "1", "-o", "json", env=no_env)
    assert listed.code == 0, listed.stderr  # the default profile's address and token
    unset = await ctl("--profile", "down", "conversations", "list", env=no_env)
    assert unset.code == 1
    one_line_error(unset, "DOWN_TOKEN", "not set")
    unknown = await ctl("--profile", "prod", "conversations", "list", env=no_env)
    assert unknown.code == 2
    one_line_error(unknown, "no profile 'prod'", "dev, down")

    script = await ctl("completion", "bash")
    assert script.code == 0
    assert "_CHATCTL_COMPLETE" in script.stdout
    completed = await ctl(
        env={"_CHATCTL_COMPLETE": "bash_complete", "COMP_WORDS": "chatctl conv", "COMP_CWORD": "1"}
    )
    assert "conversations" in completed.stdout


async def test_failed_deliveries_listed_then_all_retried_with_a_summary(
    stack_up: tuple[RunningServer, Bridge],
    platforms: Platforms,
    delivery_mongo: Mongo,
    tmp_path: Path,
) -> None:
    """Replies the WhatsApp stand-in refuses for good are dead-lettered; `deliveries retry
    --all` queues them again and they go out."""
    server, bridge = stack_up
    ctl = Chatctl({"CHAT_ADDRESS": server.target, "XDG_CONFIG_HOME": str(tmp_path / "config")})
    minted = await ctl("token", "mint", "--data-dir", str(dev_data_dir(tmp_path)))
    ctl.env["CHAT_TOKEN"] = minted.stdout.strip()
    refused = (400, {"error": {"code": 131047, "message": "Re-engagement message"}}, {})
    users = ["1650777" + str(uuid.uuid4().int)[:4] for _ in range(3)]
    replies = []
    for number in users:
        platforms.script[number] = [refused]
        replies.append(await whatsapp_reply(bridge, delivery_mongo, number))
    failed_ids = {reply.id for reply in replies}

    async def all_failed() -> bool:
        statuses = {await status_of(delivery_mongo, r.id) for r in replies}
        return statuses == {c.DELIVERY_STATUS_FAILED}

    await eventually(all_failed, "the refused deliveries to fail")

    listed = await ctl("deliveries", "failed", "--channel", "whatsapp", "-o", "json")
    assert listed.code == 0, listed.stderr
    assert {d["messageId"] for d in listed.json()} == failed_ids
    assert {d["lastError"]["code"] for d in listed.json()} == {"131047"}
    status = await ctl("deliveries", "status", replies[0].id, "-o", "csv")
    assert status.code == 0, status.stderr
    [row] = list(csv.DictReader(io.StringIO(status.stdout)))
    assert (row["status"], row["channel"], row["last error"]) == (
        "failed",
        "whatsapp",
        "131047 Re-engagement message",
    )

    # The platform takes them now; the bar is drawn on the terminal, stdout stays JSON Lines.
    result, terminal = await ctl.with_terminal_stderr("deliveries", "retry", "--all", "-o", "jsonl")
    assert result.code == 0, terminal
    outcomes = result.jsonl()
    assert {o["message_id"] for o in outcomes} == failed_ids
    assert {o["outcome"] for o in outcomes} == {"queued"}
    assert "3/3" in terminal
    assert "retried 3 deliveries: 3 queued" in terminal
    await sent(delivery_mongo, *failed_ids, what="the retried deliveries")

    # Retrying what was sent (or does not exist) fails, says so per message, exit status 1.
    again = await ctl("deliveries", "retry", replies[0].id, "no-such-message", "-o", "json")
    assert again.code == 1
    assert {o["message_id"]: o["outcome"] for o in again.json()} == {
        replies[0].id: "not failed",
        "no-such-message": "not found",
    }
    assert "1 not failed, 1 not found" in again.stderr
    nothing = await ctl("deliveries", "retry")
    assert nothing.code == 2

    checked = await ctl("channels", "check", "-o", "json")
    assert checked.code == 0, checked.stderr
    assert [(c["channel"], c["healthy"]) for c in checked.json()] == [
        ("whatsapp", True),
        ("messenger", True),
        ("slack", True),
        ("teams", True),
    ]
    assert all(isinstance(c["latency_ms"], int) for c in checked.json())
    platforms.script["health"] = [(401, {"error": {"code": 190, "message": "bad token"}}, {})]
    unhealthy = await ctl("channels", "check", "--channel", "whatsapp", "-o", "table")
    assert unhealthy.code == 1
    assert "whatsapp" in unhealthy.stdout
    assert "190" in unhealthy.stdout


async def test_audit_list_and_verify_failing_on_a_tampered_entry(
    start_server: StartServer, stack: Endpoints, tmp_path: Path
) -> None:
    database = "chatctl_" + uuid.uuid4().hex[:10]
    ctl = await chatctl_for(start_server, tmp_path, CHAT_MONGODB_DATABASE=database)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.mongodb_uri, tz_aware=True)
    try:
        log = MongoAuditLog(database=client[database])
        transactions = Transactions(client=client)
        now = dt.datetime.now(dt.UTC)
        for n in range(1, 5):
            record = AuditRecord(
                now, f"u{n % 2}", "message.received", "message", f"m{n}", "", f"e{n}"
            )
            await transactions.run(lambda tx, record=record: log.append("acme", record, tx=tx))  # type: ignore[misc]

        listed = await ctl("audit", "list", "-o", "json")
        assert listed.code == 0, listed.stderr
        assert [int(e["sequence"]) for e in listed.json()] == [4, 3, 2, 1]
        only = await ctl("audit", "list", "--actor", "u1", "-o", "csv")
        assert [r["resource"] for r in csv.DictReader(io.StringIO(only.stdout))] == [
            "message/m3",
            "message/m1",
        ]
        intact = await ctl("audit", "verify", "-o", "json")
        assert intact.code == 0, intact.stderr
        assert intact.json()["intact"] is True
        assert intact.json()["entriesChecked"] == "4"

        await client[database]["audit_log"].update_one(
            {"tenant_id": "acme", "sequence": 2}, {"$set": {"detail": "rewritten"}}
        )
        broken = await ctl("audit", "verify", "-o", "table")
        assert broken.code == 1
        one_line_error(broken, "broken at entry 2")
        assert "no" in broken.stdout  # intact: no
    finally:
        await start_server.stop_all()  # a drop beside a server's transaction stalls the store
        await client.drop_database(database)
        await client.close()


async def test_analytics_figures_and_chart(
    start_server: StartServer, stack: Endpoints, tmp_path: Path
) -> None:
    database = "chatctl_" + uuid.uuid4().hex[:10]
    ctl = await chatctl_for(start_server, tmp_path, CHAT_MONGODB_DATABASE=database)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.mongodb_uri, tz_aware=True)
    try:
        analytics = MongoAnalytics(database=client[database])
        transactions = Transactions(client=client)
        now = dt.datetime.now(dt.UTC)
        for minutes_ago, channel, inbound, outbound in (
            (20, c.CHANNEL_TYPE_WEB, 3, 3),
            (10, c.CHANNEL_TYPE_WEB, 8, 7),
            (5, c.CHANNEL_TYPE_WHATSAPP, 2, 1),
        ):
            increments = {"messages_in": inbound, "messages_out": outbound}

            async def add(
                tx: Any,
                when: dt.datetime = now - dt.timedelta(minutes=minutes_ago),
                channel: int = channel,
                increments: dict[str, float] = increments,
            ) -> None:
                await analytics.add(
                    "acme", moment=when, channel=channel, increments=increments, tx=tx
                )

            await transactions.run(add)

        table = await ctl("analytics", "--since", "30m", "-o", "table")
        assert table.code == 0, table.stderr
        lines = table.stdout.splitlines()
        web_in = next(line for line in lines if line.startswith("web in "))
        assert web_in.rstrip().endswith("| 11")
        assert "█" in web_in  # the busiest bucket is a full bar
        assert (
            next(line for line in lines if line.startswith("whatsapp out "))
            .rstrip()
            .endswith("| 1")
        )
        totals = next(line for line in lines if line.split()[:1] == ["all"])
        assert [cell.strip() for cell in totals.split("│")][:3] == ["all", "13", "11"]

        minutes = await ctl("analytics", "--since", "30m", "-o", "csv")
        rows = list(csv.DictReader(io.StringIO(minutes.stdout)))
        assert [(r["channel"], r["in"], r["out"]) for r in rows] == [
            ("web", "3", "3"),
            ("web", "8", "7"),
            ("whatsapp", "2", "1"),
        ]
        document = await ctl("analytics", "--since", "30m", "--channel", "web", "-o", "json")
        assert document.json()["totals"]["messagesIn"] == "11"
        too_long = await ctl("analytics", "--since", "3d")
        assert too_long.code == 2
        one_line_error(too_long, "INVALID_ARGUMENT")
    finally:
        await start_server.stop_all()  # a drop beside a server's transaction stalls the store
        await client.drop_database(database)
        await client.close()


async def test_tenants_apply_reads_secrets_from_the_environment_and_never_prints_them(
    start_server: StartServer, tmp_path: Path
) -> None:
    key = tmp_path / "tenant-secrets.key"
    key.write_text(base64.b64encode(os.urandom(32)).decode())
    tenant = "t-" + uuid.uuid4().hex[:10]
    ctl = await chatctl_for(
        start_server,
        tmp_path,
        tenant=tenant,
        CHAT_TENANT_SECRETS_KEY_FILE=str(key),
        # Its own database: servers of other tests (without this key) stay out of it.
        CHAT_MONGODB_DATABASE="chatctl_" + uuid.uuid4().hex[:10],
    )
    secret = "wa-secret-" + uuid.uuid4().hex
    spec = tmp_path / "tenant.yaml"
    spec.write_text(
        f"id: {tenant}\n"
        "display_name: Stored Co\n"
        "enabled: true\n"
        "channels:\n"
        "  whatsapp:\n"
        '    phone_number_id: "100000000000777"\n'
        "    access_token: ${WA_ACCESS_TOKEN}\n"
        "    app_secret: ${WA_APP_SECRET}\n"
        "  web:\n"
        "    site_key: stored-site-key\n"
        "    allowed_origins: [https://shop.example]\n"
        "    identity_secret: ${WEB_IDENTITY_SECRET}\n"
        "quotas: {requests_per_second: 5, burst: 10}\n"
    )
    missing = await ctl(
        "tenants",
        "apply",
        "-f",
        str(spec),
        env={"WA_ACCESS_TOKEN": secret, "WEB_IDENTITY_SECRET": secret + "-web"},
    )
    assert missing.code == 2
    one_line_error(missing, "channels.whatsapp.app_secret", "${WA_APP_SECRET}", "not set")
    assert secret not in missing.stdout + missing.stderr

    secrets = {
        "WA_ACCESS_TOKEN": secret,
        "WA_APP_SECRET": secret + "-app",
        "WEB_IDENTITY_SECRET": secret + "-web",
    }
    applied = await ctl("tenants", "apply", "-f", str(spec), "-o", "table", env=secrets)
    assert applied.code == 0, applied.stderr
    assert secret not in applied.stdout + applied.stderr
    assert "100000000000777" in applied.stdout

    got = await ctl("tenants", "get", "-o", "json")
    assert got.code == 0, got.stderr
    whatsapp = got.json()["tenant"]["channels"]["whatsapp"]
    assert (whatsapp["accessTokenSet"], whatsapp["appSecretSet"]) == (True, True)
    assert got.json()["tenant"]["channels"]["web"]["identitySecretSet"] is True
    assert secret not in got.stdout
    table = await ctl("tenants", "get", "-o", "csv")
    assert table.code == 0, table.stderr
    assert "web.site_key,stored-site-key" in table.stdout  # the web channel shown too
    assert "web.allowed_origins" in table.stdout
    assert secret not in table.stdout

    spec.write_text("id: [unclosed\n")
    broken = await ctl("tenants", "apply", "-f", str(spec))
    assert broken.code == 2
    one_line_error(broken, "not YAML")
    spec.write_text(f"id: {tenant}\nquotas: {{burst: {secret!r}}}\n")
    wrong = await ctl("tenants", "apply", "-f", str(spec))
    assert wrong.code == 2
    assert secret not in wrong.stderr
    one_line_error(wrong)


async def test_dlq_replay_reads_the_dead_letters(ctl: Chatctl, stack: Endpoints) -> None:
    kafka = stack.kafka_bootstrap
    counted = await ctl("dlq", "replay", "--kafka", kafka, "--tenant", "nobody", "--dry-run")
    assert counted.code == 0, counted.stderr
    assert counted.stdout == "matched 0 dead letters\n"
    down = await ctl("dlq", "replay", "--kafka", "127.0.0.1:9", "--dry-run")
    assert down.code == 5
    one_line_error(down, "Kafka at 127.0.0.1:9")


async def test_tail_resumes_after_a_lost_connection_without_gap_or_repeat(ctl: Chatctl) -> None:
    someone = user()
    conversation = (await ctl("send", "--user", someone, "one")).json()["conversation"]["id"]
    server_port = int(ctl.env["CHAT_ADDRESS"].rsplit(":", 1)[1])
    proxy = TcpProxy(listen_port=free_port(), target_port=server_port)
    await proxy.start()
    proxied = {"CHAT_ADDRESS": f"127.0.0.1:{proxy.listen_port}"}
    args = ("conversations", "tail", conversation, "--from-start", "--count", "6", "-o", "jsonl")
    try:
        async with ctl.running(*args, env=proxied) as tail:
            assert tail.stdout is not None
            for _ in "ab":  # the replay: the connection is up
                await asyncio.wait_for(tail.stdout.readline(), 20)
            await proxy.stop()  # the network drops the stream
            await ctl("send", "--user", someone, "two")  # stored while the tail is cut off
            await asyncio.sleep(0.5)
            await proxy.start()
            await ctl("send", "--user", someone, "three")
            assert await asyncio.wait_for(tail.wait(), 30) == 0
            rest = (await tail.stdout.read()).decode().splitlines()
    finally:
        await proxy.stop()
    sequences = [json.loads(line)["message"]["sequence"] for line in rest if '"message"' in line]
    assert sequences == ["3", "4", "5", "6"]
