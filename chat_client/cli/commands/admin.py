"""tenants get/apply, channels check, audit list/verify."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import click
import yaml
from google.protobuf import json_format

from chat.v1 import audit_service_pb2 as audit
from chat.v1 import delivery_service_pb2 as delivery
from chat.v1 import tenant_service_pb2 as tenants_pb
from chat_client.cli.app import App, cli, fmt_of, output_option, pass_app, say, usage
from chat_client.cli.commands.conversations import CHANNEL, CHANNELS
from chat_client.cli.exits import FAILED, OK
from chat_client.cli.output import Column, emit
from chat_client.client import ChatClient, new_request_id

#: Which secret fields each channel has, and the flag that says one is stored.
SECRETS = {
    "whatsapp": ("verify_token", "app_secret", "access_token"),
    "messenger": ("verify_token", "app_secret", "page_access_token"),
    "slack": ("signing_secret", "bot_token"),
    "teams": ("app_password",),
    "web": ("identity_secret",),
}
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

FIELD_COLUMNS = (
    Column("field", lambda row: row[0]),
    Column("value", lambda row: row[1]),
)


def tenant_rows(tenant: tenants_pb.Tenant) -> list[tuple[str, object]]:
    """The tenant as field/value rows; secrets only as whether they are set."""
    rows: list[tuple[str, object]] = [
        ("id", tenant.id),
        ("display name", tenant.display_name),
        ("enabled", tenant.enabled),
        ("quota rps", tenant.quotas.requests_per_second),
        ("quota burst", tenant.quotas.burst),
        ("updated", tenant.update_time),
    ]
    for channel in configured(tenant):
        config = getattr(tenant.channels, channel)
        for name, value in json_format.MessageToDict(
            config, preserving_proto_field_name=True
        ).items():
            if name in SECRETS[channel]:
                continue  # never sent back; the *_set flag says whether it is stored
            rows.append((f"{channel}.{name}", value))
    return rows


def configured(tenant: tenants_pb.Tenant) -> list[str]:
    """The platforms the tenant has a configuration for."""
    return [name for name in SECRETS if tenant.channels.HasField(name)]  # type: ignore[arg-type]


@cli.group()
def tenants() -> None:
    """The caller's tenant: its channels and quotas."""


@tenants.command("get")
@output_option
@pass_app
def get(app: App, fmt: str | None) -> None:
    """The tenant of the token (secrets only as *_set flags)."""
    response = app.run(
        lambda client: client.call(client.tenants.GetTenant, tenants_pb.GetTenantRequest())
    )
    emit(tenant_rows(response.tenant), FIELD_COLUMNS, fmt_of(fmt), document=response)


def read_tenant(path: Path, environ: dict[str, str]) -> tenants_pb.Tenant:
    """A tenant from YAML (the fields of chat.v1.Tenant, as in the tenants file); any string
    may reference an environment variable as ${NAME}."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise usage(f"-f {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise usage(f"{path}: not YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(document, dict):
        raise usage(f"{path}: a mapping of the tenant's fields expected")
    resolved = _resolve(document, environ, path, "")
    try:
        return json_format.ParseDict(resolved, tenants_pb.Tenant())
    except json_format.ParseError as exc:
        # The parser's message may quote a value; a secret's must not be echoed.
        raise usage(f"{path}: {_without_values(str(exc))}") from None


def _resolve(value: Any, environ: dict[str, str], path: Path, where: str) -> Any:
    if isinstance(value, dict):
        return {
            k: _resolve(v, environ, path, f"{where}.{k}" if where else str(k))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_resolve(v, environ, path, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in environ:
                raise usage(f"{path}: {where} refers to ${{{name}}}, which is not set")
            return environ[name]

        return _REFERENCE.sub(substitute, value)
    return value


def _without_values(message: str) -> str:
    """The parser's complaint without any value it quotes (a value may be a secret)."""
    field = re.search(r"Failed to parse (\w+) field", message)
    if field:
        return f"the value of {field.group(1)} is not of its type"
    return re.sub(r"""("[^"]*"|'[^']*')""", "...", message.split(" at ", maxsplit=1)[0])


@tenants.command("apply")
@click.option(
    "-f",
    "--file",
    "path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The tenant, as YAML.",
)
@output_option
@pass_app
def apply(app: App, path: Path, fmt: str | None) -> None:
    """Create or replace the caller's tenant from a YAML file (UpsertTenant).

    \b
    The file holds chat.v1.Tenant's fields, as in the tenants file:
      id: acme
      display_name: ACME Corp
      enabled: true
      channels:
        whatsapp:
          phone_number_id: "100000000000001"
          access_token: ${WHATSAPP_ACCESS_TOKEN}
      quotas: {requests_per_second: 50, burst: 100}
    Secrets may be written as ${NAME}, read from the environment; they are never printed.
    """
    tenant = read_tenant(path, dict(os.environ))
    request = tenants_pb.UpsertTenantRequest(tenant=tenant, request_id=new_request_id())
    response = app.run(lambda client: client.call(client.tenants.UpsertTenant, request))
    emit(tenant_rows(response.tenant), FIELD_COLUMNS, fmt_of(fmt), document=response)


CHECK_COLUMNS = (
    Column("channel", lambda c: c["channel"]),
    Column("healthy", lambda c: c["healthy"]),
    Column("latency ms", lambda c: c["latency_ms"]),
    Column("error", lambda c: c["error"]),
)


@cli.group()
def channels() -> None:
    """The tenant's platform channels."""


@channels.command("check")
@click.option("--channel", type=CHANNEL, help="Only this platform.")
@output_option
@pass_app
def check(app: App, channel: str | None, fmt: str | None) -> int:
    """Whether each configured platform accepts the tenant's credentials (nothing is sent);
    one line each, with the latency. Exit status 1 when one is unhealthy."""

    async def check_all(client: ChatClient) -> list[dict[str, Any]]:
        got = await client.call(client.tenants.GetTenant, tenants_pb.GetTenantRequest())
        names = [channel] if channel else configured(got.tenant)
        results = []
        for name in names:
            response = await client.call(
                client.deliveries.CheckChannel,
                delivery.CheckChannelRequest(channel=CHANNELS[name]),
            )
            error = " ".join(p for p in (response.error.code, response.error.message) if p)
            results.append(
                {
                    "channel": name,
                    "healthy": response.healthy,
                    "latency_ms": response.latency_ms,
                    "error": error,
                }
            )
        return results

    results = app.run(check_all)
    if not results:
        say("the tenant has no platform channel configured")
    emit(results, CHECK_COLUMNS, fmt_of(fmt))
    return OK if all(r["healthy"] for r in results) else FAILED


AUDIT_COLUMNS = (
    Column("seq", lambda e: e.sequence),
    Column("time", lambda e: e.occur_time),
    Column("actor", lambda e: e.actor_id),
    Column("action", lambda e: e.action),
    Column("resource", lambda e: f"{e.resource_type}/{e.resource_id}"),
    Column("detail", lambda e: e.detail),
)


@cli.group("audit")
def audit_group() -> None:
    """The tenant's hash-chained audit log."""


@audit_group.command("list")
@click.option("--actor", default="", help="Only this actor's entries.")
@click.option("--resource", default="", help="Only entries about this resource id.")
@click.option("--action", default="", help="Only this action.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@output_option
@pass_app
def audit_list(
    app: App, actor: str, resource: str, action: str, limit: int, fmt: str | None
) -> None:
    """Audit entries, newest first."""
    request = audit.ListAuditEntriesRequest(
        page_size=min(limit, 100), actor_id=actor, resource_id=resource, action=action
    )

    async def walk(client: ChatClient) -> list[audit.AuditEntry]:
        pages = client.pages(
            client.audit.ListAuditEntries, request, lambda p: p.entries, limit=limit
        )
        return [item async for item in pages]

    emit(app.run(walk), AUDIT_COLUMNS, fmt_of(fmt))


VERIFY_COLUMNS = (
    Column("intact", lambda v: v.intact),
    Column("entries checked", lambda v: v.entries_checked),
    Column("first broken", lambda v: v.first_broken_sequence or ""),
    Column("problem", lambda v: v.problem),
)


@audit_group.command("verify")
@output_option
@pass_app
def verify(app: App, fmt: str | None) -> int:
    """Recompute every hash of the chain; exit status 1 when it is broken."""
    response = app.run(
        lambda client: client.call(client.audit.VerifyAuditChain, audit.VerifyAuditChainRequest())
    )
    emit([response], VERIFY_COLUMNS, fmt_of(fmt), document=response)
    if not response.intact:
        say(
            f"the audit chain is broken at entry {response.first_broken_sequence}: "
            f"{response.problem}"
        )
        return FAILED
    return OK
