"""``chat-sandbox``: the platform sandbox as its own process (`make run` starts it)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from devstack.sandbox.app import start_sandbox
from devstack.sandbox.core import TenantSecrets
from server.repositories.tenants_file import TenantsFileError, load_tenants


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="chat-sandbox", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--bridge-url", required=True, help="where to post webhooks")
    parser.add_argument("--tenants-file", type=Path, required=True)
    parser.add_argument("--tenant", default="acme", help="the tenant whose secrets sign them")
    return parser.parse_args(argv)


def tenant_secrets(tenants_file: Path, tenant_id: str) -> TenantSecrets:
    """The tenant's webhook secrets and ids, from the tenants file."""
    tenant = load_tenants(tenants_file).get(tenant_id)
    if tenant is None:
        raise TenantsFileError(f"no tenant {tenant_id!r} in {tenants_file}")
    channels = tenant.channels
    return TenantSecrets(
        tenant_id=tenant_id,
        whatsapp_secret=channels.whatsapp.app_secret if channels.whatsapp else "",
        phone_number_id=channels.whatsapp.phone_number_id if channels.whatsapp else "",
        messenger_secret=channels.messenger.app_secret if channels.messenger else "",
        page_id=channels.messenger.page_id if channels.messenger else "",
        slack_secret=channels.slack.signing_secret if channels.slack else "",
        teams_app_id=channels.teams.app_id if channels.teams else "",
        whatsapp_token=channels.whatsapp.access_token if channels.whatsapp else "",
        messenger_token=channels.messenger.page_access_token if channels.messenger else "",
        slack_token=channels.slack.bot_token if channels.slack else "",
    )


async def serve(args: argparse.Namespace) -> None:
    secrets = tenant_secrets(args.tenants_file, args.tenant)
    sandbox = await start_sandbox(host=args.host, port=args.port)
    sandbox.recorder.max_requests = 10_000
    sandbox.connect(args.bridge_url, secrets)
    print(f"chat-sandbox: serving {sandbox.base}/ for tenant {args.tenant}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await sandbox.stop()


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``chat-sandbox``."""
    args = parse_args(argv)
    try:
        asyncio.run(serve(args))
    except (TenantsFileError, OSError) as exc:
        sys.exit(f"chat-sandbox: could not start: {exc}")
