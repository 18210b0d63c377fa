"""The root command, the state every command shares, and the boundary where every failure
becomes one line and an exit code."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
import grpc

from chat_client.cli import exits
from chat_client.cli.config import Connection, config_path, resolve
from chat_client.cli.exits import USAGE, CommandError
from chat_client.cli.output import FORMATS, choose_format
from chat_client.client import ChatClient
from chat_client.errors import ChatError

T = TypeVar("T")


@dataclass
class App:
    """What the root options decided; the connection is resolved when a command needs it."""

    address: str | None
    token: str | None
    profile: str | None
    config: Path
    deadline: float

    def connection(self) -> Connection:
        return resolve(
            address=self.address,
            token=self.token,
            profile=self.profile,
            path=self.config,
            environ=os.environ,
        )

    def run(self, work: Callable[[ChatClient], Coroutine[Any, Any, T]]) -> T:
        """Run ``work`` with a client on a fresh event loop; the client is closed after."""
        connection = self.connection()

        async def session() -> T:
            async with ChatClient.connect(
                connection.address, token=connection.token, deadline=self.deadline
            ) as client:
                return await work(client)

        try:
            return asyncio.run(session())
        except ChatError as error:
            if error.code == grpc.StatusCode.UNAVAILABLE and not error.reason:
                # Not the server's answer (it always gives a reason): it was not reached.
                raise CommandError(
                    f"cannot reach the server at {connection.address}: {error}",
                    code=exits.UNAVAILABLE,
                ) from None
            raise


pass_app = click.make_pass_decorator(App)

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def output_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``-o/--output``: table on a terminal, JSON when piped."""
    return click.option(
        "-o",
        "--output",
        "fmt",
        type=click.Choice(FORMATS),
        default=None,
        help="Output format (default: table on a terminal, json otherwise).",
    )(command)


def fmt_of(requested: str | None) -> str:
    return choose_format(requested)


_RELATIVE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class When(click.ParamType):  # type: ignore[type-arg]
    """A moment: ISO 8601 (UTC unless it says), or a duration ago such as ``15m``, ``2h``,
    ``7d``."""

    name = "TIME"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> dt.datetime:
        if isinstance(value, dt.datetime):
            return value
        text = str(value).strip()
        relative = _RELATIVE.match(text)
        if relative:
            amount, unit = relative.groups()
            return dt.datetime.now(dt.UTC) - dt.timedelta(**{_UNITS[unit]: int(amount)})
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError:
            self.fail(f"{text!r} is neither ISO 8601 nor a duration like 15m, 2h, 7d", param, ctx)
        return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


WHEN = When()


@click.group(context_settings=CONTEXT)
@click.option(
    "--address",
    envvar="CHAT_ADDRESS",
    help="Server address: host:port (plaintext) or https://host:port (TLS). "
    "Env CHAT_ADDRESS; default: the profile's, else 127.0.0.1:8001.",
)
@click.option(
    "--token",
    envvar="CHAT_TOKEN",
    help="Bearer token (JWT). Env CHAT_TOKEN; default: the profile's.",
)
@click.option(
    "--profile",
    envvar="CHATCTL_PROFILE",
    help="Profile of the config file (default: its `default`). Env CHATCTL_PROFILE.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Profiles file (default: ~/.config/chatctl/config.toml).",
)
@click.option(
    "--deadline",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Seconds each call may take.",
)
@click.version_option(package_name="chat-service", prog_name="chatctl")
@click.pass_context
def cli(  # noqa: PLR0917 - click passes one argument per option
    ctx: click.Context,
    address: str | None,
    token: str | None,
    profile: str | None,
    config_file: Path | None,
    deadline: float,
) -> None:
    """chatctl: the operator's command line for chat-service.

    \b
    Connection: --address/--token, else CHAT_ADDRESS/CHAT_TOKEN, else a profile of
    ~/.config/chatctl/config.toml, e.g.
      default = "dev"
      [profiles.dev]
      address = "127.0.0.1:8001"
      token_file = "~/.chat-dev-token"      # or token = "...", or token_env = "VAR"
      [profiles.prod]
      address = "https://chat.example.com:443"
      token_env = "PROD_CHAT_TOKEN"

    \b
    Exit codes:
      0 ok, 1 failed, 2 usage, 3 not found, 4 permission, 5 unavailable.
    """
    ctx.obj = App(
        address=address,
        token=token,
        profile=profile,
        config=config_file or config_path(os.environ),
        deadline=deadline,
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``chatctl``: every failure is one line on stderr and an exit code."""
    # The commands are registered by importing their modules.
    from chat_client.cli import commands  # noqa: F401, PLC0415 - registers the subcommands

    code = run_cli(argv)
    sys.exit(code)


def run_cli(argv: list[str] | None) -> int:  # noqa: PLR0911 - one return per kind of failure
    """The command's exit code; never raises (a Python traceback is never what a user sees)."""
    try:
        result = cli.main(args=argv, prog_name="chatctl", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        say("interrupted")
        return exits.FAILED
    except ChatError as exc:
        say(str(exc))
        return exits.exit_code(exc.code)
    except CommandError as exc:
        say(str(exc))
        return exc.code
    except BrokenPipeError:
        # The reader went away (`chatctl ... | head`): stop quietly, as Unix tools do.
        _silence_stdout()
        return exits.OK
    except Exception as exc:  # noqa: BLE001 - the one boundary: one line, never a traceback
        say(f"unexpected error: {type(exc).__name__}: {exc}")
        return exits.FAILED
    return result if isinstance(result, int) else exits.OK


def say(message: str) -> None:
    """One line on stderr, prefixed ``chatctl:``."""
    sys.stderr.write("chatctl: " + " ".join(message.split()) + "\n")
    sys.stderr.flush()


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


async def gather_limited(jobs: list[Awaitable[T]], limit: int) -> list[T]:
    """Await ``jobs`` with at most ``limit`` running at once, results in order."""
    semaphore = asyncio.Semaphore(limit)

    async def one(job: Awaitable[T]) -> T:
        async with semaphore:
            return await job

    return list(await asyncio.gather(*(one(job) for job in jobs)))


def usage(message: str) -> CommandError:
    return CommandError(message, code=USAGE)
