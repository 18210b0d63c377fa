"""analytics, token mint, completion."""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import click
from click.shell_completion import get_completion_class

import devstack
from chat.v1 import analytics_service_pb2 as analytics
from chat.v1 import common_pb2 as common
from chat_client.cli.app import WHEN, App, cli, fmt_of, output_option, pass_app, usage
from chat_client.cli.chart import chart
from chat_client.cli.commands.conversations import CHANNEL, CHANNELS, time_range
from chat_client.cli.exits import CommandError
from chat_client.cli.output import Column, channel_name, emit
from devstack.tokens import DEV_SCOPES, mint_dev_token

SUMMARY_COLUMNS = (
    Column("channel", lambda r: r["channel"]),
    Column("in", lambda r: r["messages_in"]),
    Column("out", lambda r: r["messages_out"]),
    Column("responses", lambda r: r["responses"]),
    Column("delivered", lambda r: r["deliveries_succeeded"]),
    Column("failed", lambda r: r["deliveries_failed"]),
    Column("conversations ended", lambda r: r["conversations_ended"]),
)
MINUTE_COLUMNS = (
    Column("minute", lambda m: m.minute_start_time),
    Column("channel", lambda m: channel_name(m.channel)),
    Column("in", lambda m: m.figures.messages_in),
    Column("out", lambda m: m.figures.messages_out),
    Column("responses", lambda m: m.figures.responses),
    Column("response mean ms", lambda m: m.figures.response_time_mean_ms),
    Column("delivered", lambda m: m.figures.deliveries_succeeded),
    Column("failed", lambda m: m.figures.deliveries_failed),
    Column("conversations ended", lambda m: m.figures.conversations_ended),
)
_COUNTS = (
    "messages_in",
    "messages_out",
    "responses",
    "deliveries_succeeded",
    "deliveries_failed",
    "conversations_ended",
)


def per_channel(response: analytics.GetTenantAnalyticsResponse) -> list[dict[str, Any]]:
    """Each channel's counts over the period, then the tenant's totals."""
    sums: dict[int, dict[str, int]] = defaultdict(lambda: dict.fromkeys(_COUNTS, 0))
    for minute in response.minutes:
        for name in _COUNTS:
            sums[minute.channel][name] += getattr(minute.figures, name)
    rows: list[dict[str, Any]] = [
        {"channel": channel_name(channel), **counts} for channel, counts in sorted(sums.items())
    ]
    rows.append({"channel": "all", **{name: getattr(response.totals, name) for name in _COUNTS}})
    return rows


@cli.command("analytics", short_help="Figures of a period, per channel, with a chart.")
@click.option(
    "--since",
    type=WHEN,
    default="1h",
    show_default=True,
    help="Start (ISO 8601, or 15m, 2h ago); at most 24 hours before --until.",
)
@click.option("--until", type=WHEN, help="End (default: now).")
@click.option("--channel", type=CHANNEL, help="Only this channel.")
@output_option
@pass_app
def analytics_command(
    app: App, since: dt.datetime, until: dt.datetime | None, channel: str | None, fmt: str | None
) -> None:
    """The tenant's figures for a period: per channel, and a chart of messages in and out
    over time (table output); the per-minute figures in the other formats."""
    end = until or dt.datetime.now(dt.UTC)
    request = analytics.GetTenantAnalyticsRequest(
        time_range=time_range(since, end),
        channel=CHANNELS[channel] if channel else common.CHANNEL_TYPE_UNSPECIFIED,
    )
    response = app.run(lambda client: client.call(client.analytics.GetTenantAnalytics, request))
    chosen = fmt_of(fmt)
    if chosen != "table":
        emit(list(response.minutes), MINUTE_COLUMNS, chosen, document=response)
        return
    emit(per_channel(response), SUMMARY_COLUMNS, chosen)
    totals = response.totals
    attempted = totals.deliveries_succeeded + totals.deliveries_failed
    success = f"{totals.delivery_success_rate:.0%}" if attempted else "n/a (no deliveries)"
    click.echo(
        f"\nresponse time mean {totals.response_time_mean_ms:.0f} ms, "
        f"max {totals.response_time_max_ms:.0f} ms; delivery success {success}\n"
    )
    for line in chart(list(response.minutes), since, end):
        click.echo(line)


#: Where `make run` keeps its data when run from the checkout (`make` runs in its root):
#: chatctl is installed editable from that checkout, next to devstack.
CHECKOUT_DATA_DIR = Path(devstack.__file__).resolve().parent.parent / ".data"
_LIFETIME = re.compile(r"^(\d+)([smhd]?)$")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def lifetime_seconds(text: str) -> int:
    match = _LIFETIME.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise usage(f"--lifetime {text!r}: a duration like 3600, 90m, 24h or 7d expected")
    return int(match.group(1)) * _SECONDS[match.group(2)]


@cli.group()
def token() -> None:
    """Development tokens."""


@token.command("mint")
@click.option("--tenant", default="acme", show_default=True)
@click.option("--subject", default="dev-user", show_default=True, help="The token's sub.")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    metavar="SCOPE",
    help=f"Repeat for several (default: {' '.join(DEV_SCOPES)}).",
)
@click.option("--lifetime", default="24h", show_default=True, help="e.g. 3600, 90m, 24h, 7d.")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="CHAT_DEV_DATA_DIR",
    help="make run's data directory, which holds its secret (default: .data/ of the "
    "checkout chatctl is installed from). Env CHAT_DEV_DATA_DIR, as for make run.",
)
@click.option(
    "--secret-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The HS256 secret (default: DATA_DIR/dev-jwt-secret).",
)
def mint(
    tenant: str,
    subject: str,
    scopes: tuple[str, ...],
    lifetime: str,
    data_dir: Path | None,
    secret_file: Path | None,
) -> None:
    """Print a development token signed with the secret `make run` keeps.

    Only a server started by `make run` (or given the same secret as CHAT_JWT_SECRET)
    accepts it; production verifies tokens from your identity provider.
    """
    seconds = lifetime_seconds(lifetime)
    path = secret_file or (data_dir or CHECKOUT_DATA_DIR) / "dev-jwt-secret"
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise CommandError(
            f"no development secret at {path}: `make run` creates it in its data directory "
            "on its first start (run it once), or give --data-dir or --secret-file"
        ) from None
    except OSError as exc:
        raise CommandError(f"cannot read the development secret {path}: {exc.strerror}") from None
    if not secret:
        raise CommandError(f"the development secret {path} is empty")
    click.echo(
        mint_dev_token(
            secret=secret,
            tenant_id=tenant,
            subject=subject,
            scopes=scopes or DEV_SCOPES,
            lifetime_seconds=seconds,
        )
    )


@cli.command(short_help="Print the shell completion script.")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script, e.g. `eval "$(chatctl completion bash)"`
    (in ~/.bashrc), or `chatctl completion fish > ~/.config/fish/completions/chatctl.fish`."""
    completer = get_completion_class(shell)
    if completer is None:  # pragma: no cover - click knows the three choices
        raise usage(f"no completion for {shell}")
    click.echo(completer(cli, {}, "chatctl", "_CHATCTL_COMPLETE").source())
