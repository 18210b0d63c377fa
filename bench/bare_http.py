"""The webhook baseline: a bare aiohttp handler that reads the body and answers 200."""

from __future__ import annotations

import sys

from aiohttp import web


async def handle(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(text="ok")


def main() -> None:
    app = web.Application()
    app.router.add_post("/webhooks/whatsapp/{tenant_id}", handle)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
