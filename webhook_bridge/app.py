"""The bridge's aiohttp application: verify each platform's webhook, normalize it, forward
it to the chat server, and answer the platform.

aiohttp rather than Starlette+uvicorn: one dependency gives both the server and the HTTP
client the adapters need (Teams keys), it reads the raw body bytes that signature checks
require without an ASGI layer in between, and its server is among the fastest pure-asyncio ones.

Order of every webhook: tenant (404), size (413), the body within its time (408), signature
(401 without one, 403 with a wrong one), then content type, JSON and parsing; nothing is
forwarded or stored before the signature holds. A signed body the bridge cannot use (not
JSON, nested too deep, not the platform's shape) is acknowledged with 200, counted and logged
as rejected: the platform would retry anything else for hours, to the same end. A bad entry of
a batch is dropped alone. The platform gets 200 only once the server stored the events; 503
when it could not, so the platform retries (the server deduplicates the retry).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
import structlog
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chat.v1 import ingest_service_pb2
from server.domain.errors import Unavailable
from server.domain.tenant import Tenant, TenantCatalog
from webhook_bridge.adapters import (
    MalformedPayloadError,
    Parsed,
    messenger,
    slack,
    teams,
    text,
    whatsapp,
)
from webhook_bridge.bodies import (
    BODY_TIMEOUT_SECONDS,
    UnusableBodyError,
    form_payload,
    json_body,
    read_body,
    refuse,
)
from webhook_bridge.forwarder import (
    CALLS_AT_ONCE,
    CHANNEL_OPTIONS,
    Forwarder,
    ServerUnavailableError,
)
from webhook_bridge.metrics import BridgeMetrics
from webhook_bridge.metrics import metrics_page as registry_page
from webhook_bridge.signatures import meta_signature_valid, slack_signature_valid
from webhook_bridge.teams_auth import BotFrameworkVerifier, TeamsAuthError
from webhook_bridge.tokens import ServiceTokens
from webhook_bridge.tracing import tracing_middlewares
from webhook_bridge.web.config import WebSettings
from webhook_bridge.web.gateway import WEB_STATE
from webhook_bridge.web.routes import add_web_routes, web_state
from webhook_bridge.web.visitors import VisitorTokens

log = structlog.get_logger("chat.bridge")

SERVER_CHANNEL = web.AppKey("server_channel", grpc.aio.Channel)
_OUTCOMES = ingest_service_pb2.IngestOutcome


@dataclass(slots=True)
class BridgeState:
    """What the handlers share: tenants, the forwarder, the Teams verifier, the metrics."""

    tenants: TenantCatalog
    forwarder: Forwarder
    teams: BotFrameworkVerifier
    metrics: BridgeMetrics
    body_timeout: float = BODY_TIMEOUT_SECONDS
    clock: Callable[[], float] = time.time


STATE = web.AppKey("bridge_state", BridgeState)


def create_app(
    *,
    server_target: str,
    tenants: TenantCatalog,
    tokens: ServiceTokens,
    teams_metadata_url: str,
    max_body_bytes: int = 1024 * 1024,
    body_timeout: float = BODY_TIMEOUT_SECONDS,
    calls_at_once: int = CALLS_AT_ONCE,
    metrics: BridgeMetrics | None = None,
    visitor_tokens: VisitorTokens | None = None,
    web_settings: WebSettings | None = None,
) -> web.Application:
    """Build the application; the gRPC channel and HTTP client open on start-up. With
    ``visitor_tokens``, the web chat gateway too (webhook_bridge/web)."""
    app = web.Application(client_max_size=max_body_bytes, middlewares=tracing_middlewares())
    metrics = metrics or BridgeMetrics()

    async def resources(app: web.Application) -> AsyncIterator[None]:
        channel = grpc.aio.insecure_channel(server_target, options=CHANNEL_OPTIONS)
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        app[SERVER_CHANNEL] = channel
        app[STATE] = BridgeState(
            tenants=tenants,
            forwarder=Forwarder(
                channel=channel,
                tokens=tokens,
                calls_at_once=calls_at_once,
                on_call=metrics.webhooks_per_call.observe,
            ),
            teams=BotFrameworkVerifier(metadata_url=teams_metadata_url, http=http),
            metrics=metrics,
            body_timeout=body_timeout,
        )
        if visitor_tokens is not None:
            app[WEB_STATE] = web_state(
                channel=channel,
                tenants=tenants,
                tokens=visitor_tokens,
                settings=web_settings or WebSettings(),
            )
            sockets = app[WEB_STATE].open_sockets
            metrics.watch_sockets(lambda: len(sockets))
        yield
        await http.close()
        await channel.close(None)

    app.cleanup_ctx.append(resources)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/webhooks/whatsapp/{tenant_id}", meta_handshake("whatsapp"))
    app.router.add_post("/webhooks/whatsapp/{tenant_id}", counted("whatsapp", whatsapp_post))
    app.router.add_get("/webhooks/messenger/{tenant_id}", meta_handshake("messenger"))
    app.router.add_post("/webhooks/messenger/{tenant_id}", counted("messenger", messenger_post))
    app.router.add_post("/webhooks/slack/{tenant_id}", counted("slack", slack_events))
    app.router.add_post(
        "/webhooks/slack/{tenant_id}/interactivity", counted("slack", slack_interactivity)
    )
    app.router.add_post("/webhooks/teams/{tenant_id}", counted("teams", teams_post))
    if visitor_tokens is not None:
        add_web_routes(app)
    return app


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def counted(platform: str, handler: Handler) -> Handler:
    """Count and time every answer (including refusals) by platform and status; acknowledge a
    signed body the bridge cannot use."""

    async def wrapper(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        metrics = request.app[STATE].metrics
        try:
            response = await handler(request)
        except UnusableBodyError as exc:
            rejected(request.app[STATE], platform, [exc.reason], detail=exc.detail)
            response = web.json_response({"received": 0, "ignored": 0, "rejected": 1})
        except web.HTTPException as exc:
            metrics.answered(platform, exc.status, time.perf_counter() - started)
            raise
        metrics.answered(platform, response.status, time.perf_counter() - started)
        return response

    return wrapper


def _tenant(request: web.Request) -> Tenant:
    tenants = request.app[STATE].tenants
    tenant = tenants.get(request.match_info["tenant_id"])
    if tenant is None and not tenants.loaded:
        # Stored tenants are not read yet (MongoDB unreachable at start): the platform retries.
        raise refuse(503, "tenants are loading")
    if tenant is None or not tenant.enabled:
        raise refuse(404, "unknown tenant")
    return tenant


async def _body(request: web.Request) -> bytes:
    return await read_body(request, seconds=request.app[STATE].body_timeout)


def meta_handshake(platform: str) -> Handler:
    """The hub.* subscription handshake of WhatsApp and Messenger."""

    async def handshake(request: web.Request) -> web.StreamResponse:
        tenant = _tenant(request)
        credentials = getattr(tenant.channels, platform)
        if credentials is None:
            raise refuse(404, f"{platform} is not configured for this tenant")
        query = request.query
        token = query.get("hub.verify_token", "")
        challenge = query.get("hub.challenge", "")
        if (
            query.get("hub.mode") != "subscribe"
            or not challenge
            or not credentials.verify_token
            or not hmac.compare_digest(token.encode(), credentials.verify_token.encode())
        ):
            raise refuse(403, "verification failed")
        return web.Response(text=challenge)

    return counted(platform, handshake)


async def whatsapp_post(request: web.Request) -> web.StreamResponse:
    tenant = _tenant(request)
    credentials = tenant.channels.whatsapp
    if credentials is None:
        raise refuse(404, "whatsapp is not configured for this tenant")
    return await _meta_post(
        request,
        tenant,
        credentials.app_secret,
        "whatsapp",
        whatsapp.parse,
        account=credentials.phone_number_id,
    )


async def messenger_post(request: web.Request) -> web.StreamResponse:
    tenant = _tenant(request)
    credentials = tenant.channels.messenger
    if credentials is None:
        raise refuse(404, "messenger is not configured for this tenant")
    return await _meta_post(
        request,
        tenant,
        credentials.app_secret,
        "messenger",
        messenger.parse,
        account=credentials.page_id,
    )


async def _meta_post(
    request: web.Request,
    tenant: Tenant,
    app_secret: str,
    platform: str,
    parse: Callable[[Any], Parsed],
    *,
    account: str,
) -> web.StreamResponse:
    raw = await _body(request)
    signature = request.headers.get("X-Hub-Signature-256")
    if not signature:
        raise refuse(401, "X-Hub-Signature-256 missing")
    if not meta_signature_valid(app_secret, raw, signature):
        raise refuse(403, "signature does not match")
    parsed = _parsed(parse, json_body(raw))
    if account:
        # One Meta app can serve several tenants' numbers or pages: each tenant takes only
        # its own account's events.
        foreign = [e for e in parsed.events if e.platform_account_id not in ("", account)]
        parsed.events = [e for e in parsed.events if e not in foreign]
        parsed.ignored += ["foreign-account"] * len(foreign)
    return await _forward(request, tenant, platform, parsed)


def _slack_verified(request: web.Request, tenant: Tenant, raw: bytes) -> None:
    credentials = tenant.channels.slack
    if credentials is None:
        raise refuse(404, "slack is not configured for this tenant")
    timestamp = request.headers.get("X-Slack-Request-Timestamp")
    signature = request.headers.get("X-Slack-Signature")
    if not timestamp or not signature:
        raise refuse(401, "X-Slack-Signature or X-Slack-Request-Timestamp missing")
    if not slack_signature_valid(
        credentials.signing_secret,
        raw,
        timestamp=timestamp,
        signature=signature,
        now=request.app[STATE].clock(),
    ):
        raise refuse(403, "signature does not match, or the request is too old")


async def slack_events(request: web.Request) -> web.StreamResponse:
    tenant = _tenant(request)
    raw = await _body(request)
    _slack_verified(request, tenant, raw)
    payload = json_body(raw)
    if isinstance(payload, dict) and payload.get("type") == "url_verification":
        return web.json_response({"challenge": text(payload.get("challenge"))})
    return await _forward(request, tenant, "slack", _parsed(slack.parse_event, payload))


async def slack_interactivity(request: web.Request) -> web.StreamResponse:
    tenant = _tenant(request)
    raw = await _body(request)
    _slack_verified(request, tenant, raw)
    payload = form_payload(request, raw)
    return await _forward(request, tenant, "slack", _parsed(slack.parse_interaction, payload))


async def teams_post(request: web.Request) -> web.StreamResponse:
    tenant = _tenant(request)
    credentials = tenant.channels.teams
    if credentials is None:
        raise refuse(404, "teams is not configured for this tenant")
    raw = await _body(request)
    verifier = request.app[STATE].teams
    try:
        verified = await verifier.authenticate(
            request.headers.get("Authorization"), app_id=credentials.app_id
        )
        activity = json_body(raw)
        if not isinstance(activity, dict):
            raise UnusableBodyError("not-platform-shape", "expected an activity object")
        verified.check(
            service_url=text(activity.get("serviceUrl")),
            channel_id=text(activity.get("channelId")),
        )
    except TeamsAuthError as exc:
        raise refuse(exc.status, exc.reason) from None
    except Unavailable:
        raise refuse(503, "cannot verify Teams requests right now") from None
    response = await _forward(request, tenant, "teams", _parsed(teams.parse, activity))
    if activity.get("type") == "invoke":
        # Teams waits for an invoke response within the request.
        return web.json_response(
            {"statusCode": 200, "type": "application/vnd.microsoft.activity.message", "value": ""}
        )
    return response


def _parsed(parse: Callable[[Any], Parsed], payload: Any) -> Parsed:
    try:
        return parse(payload)
    except MalformedPayloadError as exc:
        raise UnusableBodyError("not-platform-shape", str(exc)) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # Values the adapters' own checks let through: never a 5xx for a signed body.
        raise UnusableBodyError("unusable", type(exc).__name__) from None


def outcome_name(outcome: ingest_service_pb2.IngestOutcome.ValueType) -> str:
    """The metrics label of a server's outcome; a value this bridge does not know yet (a
    newer server's) is counted as such, not a 500 after the events were stored."""
    if outcome not in _OUTCOMES.values():
        return "unknown"
    return _OUTCOMES.Name(outcome).removeprefix("INGEST_OUTCOME_").lower()


def rejected(state: BridgeState, platform: str, reasons: list[str], *, detail: str = "") -> None:
    """Count and log (once, as a warning without a traceback) what could not be used."""
    for reason in reasons:
        state.metrics.rejected.labels(platform, reason).inc()
    log.warning("webhook rejected", platform=platform, reasons=reasons[:20], detail=detail)


async def _forward(
    request: web.Request, tenant: Tenant, platform: str, parsed: Parsed
) -> web.StreamResponse:
    state = request.app[STATE]
    for kind in parsed.ignored:
        state.metrics.ignored.labels(platform, kind.partition(":")[0]).inc()
    if parsed.ignored:
        log.info("webhook entries ignored", platform=platform, kinds=parsed.ignored[:20])
    if parsed.rejected:
        rejected(state, platform, parsed.rejected, detail="entries of a batch dropped")
    if parsed.events:
        try:
            results = await state.forwarder.forward(tenant.id, parsed.events)
        except ServerUnavailableError:
            raise refuse(503, "the chat server is unavailable; retry later") from None
        for result in results:
            outcome = outcome_name(result.outcome)
            state.metrics.events.labels(platform, outcome).inc()
            if result.outcome == ingest_service_pb2.INGEST_OUTCOME_REJECTED:
                log.warning(
                    "event rejected by the server",
                    platform=platform,
                    platform_event_id=result.platform_event_id,
                    reason=result.error_reason,
                    error=result.error_message,
                )
    return web.json_response(
        {
            "received": len(parsed.events),
            "ignored": len(parsed.ignored),
            "rejected": len(parsed.rejected),
        }
    )


async def metrics_page(request: web.Request) -> web.Response:
    """Prometheus text format."""
    return await registry_page(request.app[STATE].metrics.registry)


async def healthz(request: web.Request) -> web.Response:
    """200 when the bridge is up and the chat server reports SERVING, else 503."""
    stub = health_pb2_grpc.HealthStub(request.app[SERVER_CHANNEL])
    try:
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
        server = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.aio.AioRpcError as exc:
        server = f"UNREACHABLE ({exc.code().name})"
    healthy = server == "SERVING"
    return web.json_response(
        {"status": "ok" if healthy else "unavailable", "server": server},
        status=200 if healthy else 503,
    )
