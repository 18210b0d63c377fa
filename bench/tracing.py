"""What tracing costs: SendMessage at 64 in flight against chat-servers that differ only in
their OTEL_* settings, measured in turns (each setting twice, alternating, so the machine's
drift falls on both alike).

- ``disabled``: OTEL_SDK_DISABLED=true, the standard switch; nothing of OpenTelemetry is
  set up or instrumented. The baseline.
- ``off``: no OTEL_* at all, what a deployment without a collector runs. The claim is that
  this costs nothing measurable next to ``disabled``.
- ``on``: exporting every span over OTLP/HTTP to a sink process (bench/otlp_sink.py), with
  the SDK's default batching. What turning tracing on costs, for the operator's judgement.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

import grpc

from bench.common import (
    DURATION_SECONDS,
    Figure,
    Load,
    client_figure,
    drive,
    drop_database,
    send_message_call,
    start,
)
from devstack.processes import free_port, script_path

IN_FLIGHT = 64
ROUNDS = 2


@dataclass
class Setting:
    """One server process and what its turns measured."""

    name: str
    otel: dict[str, str]
    loads: list[Load]


#: The database of this part's servers: their messages stay out of the other parts'.
DATABASE = "chat_bench_tracing"


async def measure(env: dict[str, str], metadata: Any, mongodb_uri: str) -> list[Figure]:
    """Start a server per setting, drive each in turn, and compare with ``disabled``."""
    sink_port = free_port()
    sink = start([sys.executable, "-m", "bench.otlp_sink", str(sink_port)], env, sink_port)
    settings = [
        Setting("disabled", {"OTEL_SDK_DISABLED": "true"}, []),
        Setting("off", {}, []),
        Setting("on", {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}"}, []),
    ]
    base = {k: v for k, v in env.items() if not k.startswith("OTEL_")}
    base["CHAT_MONGODB_DATABASE"] = DATABASE
    processes = []
    try:
        for _ in range(ROUNDS):
            for setting in settings:
                port = free_port()
                server_env = {**base, **setting.otel, "CHAT_GRPC_ADDRESS": f"127.0.0.1:{port}"}
                # One server at a time: an idle one's loops would take from the measured one.
                server = start([script_path("chat-server")], server_env, port)
                processes.append(server)
                try:
                    setting.loads.append(await _load(f"127.0.0.1:{port}", metadata, server.pid))
                finally:
                    server.terminate()
                    server.wait(20)
    finally:
        for process in (*processes, sink):
            if process.poll() is None:
                process.terminate()
                process.wait(20)
        await drop_database(mongodb_uri, DATABASE)  # once its servers are gone
    return _figures({setting.name: setting.loads for setting in settings})


async def _load(target: str, metadata: Any, pid: int) -> Load:
    async with grpc.aio.insecure_channel(target) as channel:
        send = send_message_call(channel, metadata)
        return await drive(send, in_flight=IN_FLIGHT, seconds=DURATION_SECONDS, server_pids=(pid,))


def _figures(loads: dict[str, list[Load]]) -> list[Figure]:
    def rps(name: str) -> float:
        return sum(load.requests for load in loads[name]) / sum(
            load.seconds for load in loads[name]
        )

    def cpu_ms(name: str) -> float:
        runs = loads[name]
        return sum(r.server_cpu_seconds for r in runs) / sum(r.requests for r in runs) * 1000

    def p50(name: str) -> float:
        return Load(0, 1, [x for r in loads[name] for x in r.latencies], 0, 0).percentile(0.5)

    disabled_rps, disabled_cpu = rps("disabled"), cpu_ms("disabled")
    off_ratio = rps("off") / disabled_rps
    off_cpu_ratio = cpu_ms("off") / disabled_cpu
    figures = [
        Figure("tracing_disabled_rps", round(disabled_rps, 1), "requests/s", "", None),
        Figure(
            "tracing_off_rps", round(rps("off"), 1), "requests/s", "", None, round(disabled_rps, 1)
        ),
        Figure(
            "tracing_on_rps", round(rps("on"), 1), "requests/s", "", None, round(disabled_rps, 1)
        ),
        Figure("tracing_off_p50", round(p50("off"), 2), "ms", "", None, round(p50("disabled"), 2)),
        Figure("tracing_on_p50", round(p50("on"), 2), "ms", "", None, round(p50("disabled"), 2)),
        Figure(
            "tracing_off_throughput_ratio",
            round(off_ratio, 3),
            "x disabled",
            ">= 0.95x (nothing measurable)",
            off_ratio >= 0.95,
            round(disabled_rps, 1),
        ),
        Figure(
            "tracing_off_cpu_per_request_ratio",
            round(off_cpu_ratio, 3),
            "x disabled",
            "<= 1.05x (nothing measurable)",
            off_cpu_ratio <= 1.05,
            round(disabled_cpu, 3),
        ),
        Figure(
            "tracing_on_throughput_ratio",
            round(rps("on") / disabled_rps, 3),
            "x disabled",
            "",
            None,
            round(disabled_rps, 1),
        ),
        Figure(
            "tracing_on_cpu_per_request_ratio",
            round(cpu_ms("on") / disabled_cpu, 3),
            "x disabled",
            "",
            None,
            round(disabled_cpu, 3),
        ),
    ]
    hooks_us = _off_hooks_microseconds()
    share = hooks_us / (disabled_cpu * 1000)
    figures.append(
        Figure(
            "tracing_off_hooks_share_of_cpu",
            round(share * 100, 4),
            "% of a SendMessage's server CPU",
            "< 1% (nothing measurable)",
            share < 0.01,
            round(hooks_us, 3),
        )
    )
    cores = max(load.client_cores for runs in loads.values() for load in runs)
    figures.append(client_figure("tracing", cores))
    return figures


#: The tracing hooks one inbound platform message meets, with what their call sites build
#: while tracing is off (the services' and repositories' calls of server.tracing.spans): the
#: group commit's flag (per item and per batch), trace_fields on its outbox events, reply job
#: and delivery, and the spans of the reply job, the responder call, the delivery send, the
#: relay and the worker's handler. SendMessage meets fewer of them.
_HOOK_ROUNDS = 20_000


def _off_hooks_microseconds() -> float:
    """What those hooks cost together while tracing is off, in microseconds: measured in this
    process, where tracing is never configured (so every hook takes its off path). The
    baseline column of the figure; its share of a SendMessage's server CPU is the figure."""
    from server.tracing.spans import current_traceparent, span, trace_fields  # noqa: PLC0415
    from server.tracing.state import STATE  # noqa: PLC0415

    assert not STATE.enabled  # noqa: S101 - the bench process never configures tracing

    def one_message() -> None:
        if STATE.enabled:
            current_traceparent()
        if STATE.enabled:
            current_traceparent()
        for _ in range(3):
            {"event_id": "e", **trace_fields("tenant", "conversation")}
        {"_id": "j", **trace_fields("tenant", "conversation")}
        {"_id": "d", **trace_fields("tenant", "conversation")}
        for name in ("reply.job", "reply.respond", "delivery.send", "outbox.relay", "worker"):
            with span(name, parent="", attributes={"chat.attempt": 1, "chat.channel": "x"}):
                pass

    started = time.perf_counter()
    for _ in range(_HOOK_ROUNDS):
        one_message()
    return (time.perf_counter() - started) / _HOOK_ROUNDS * 1_000_000
