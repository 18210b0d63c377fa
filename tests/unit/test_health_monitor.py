from __future__ import annotations

import asyncio

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from server.health import NOT_SERVING, SERVING, Dependency, HealthMonitor


async def up() -> None:
    return None


async def down() -> None:
    raise ConnectionError("refused")


async def hangs() -> None:
    await asyncio.sleep(60)


async def status(servicer: health_aio.HealthServicer, name: str) -> int:
    reply = await servicer.Check(health_pb2.HealthCheckRequest(service=name), None)
    return int(reply.status)


def monitor(servicer: health_aio.HealthServicer, **probes: object) -> HealthMonitor:
    return HealthMonitor(
        servicer=servicer,
        dependencies=[
            Dependency("mongodb", probes.get("mongodb", up), required=True),  # type: ignore[arg-type]
            Dependency("kafka", probes.get("kafka", up), required=False),  # type: ignore[arg-type]
        ],
        service_names=["chat.v1.ChatService"],
        interval_seconds=1,
        probe_timeout_seconds=0.2,
    )


async def test_all_up_is_serving() -> None:
    servicer = health_aio.HealthServicer()
    assert await monitor(servicer).check_once() == {"mongodb": True, "kafka": True}
    for name in ("", "chat.v1.ChatService", "mongodb", "kafka"):
        assert await status(servicer, name) == SERVING


async def test_an_optional_dependency_down_keeps_the_service_serving() -> None:
    servicer = health_aio.HealthServicer()
    await monitor(servicer, kafka=down).check_once()
    assert await status(servicer, "kafka") == NOT_SERVING
    assert await status(servicer, "") == SERVING
    assert await status(servicer, "chat.v1.ChatService") == SERVING


async def test_a_required_dependency_down_or_hanging_makes_it_not_serving() -> None:
    for probe in (down, hangs):
        servicer = health_aio.HealthServicer()
        await monitor(servicer, mongodb=probe).check_once()
        assert await status(servicer, "mongodb") == NOT_SERVING
        assert await status(servicer, "") == NOT_SERVING
        assert await status(servicer, "chat.v1.ChatService") == NOT_SERVING


async def test_recovery_is_reported() -> None:
    servicer = health_aio.HealthServicer()
    state = {"probe": down}

    async def flaky() -> None:
        await state["probe"]()

    health = monitor(servicer, mongodb=flaky)
    await health.check_once()
    assert await status(servicer, "") == NOT_SERVING
    state["probe"] = up
    await health.check_once()
    assert await status(servicer, "") == SERVING


async def test_a_dependency_down_is_probed_again_soon_so_recovery_shows_within_the_recheck() -> (
    None
):
    servicer = health_aio.HealthServicer()
    state = {"probe": down}

    async def flaky() -> None:
        await state["probe"]()

    health = HealthMonitor(
        servicer=servicer,
        dependencies=[Dependency("mongodb", flaky, required=True)],
        service_names=[],
        # A long interval: only the recheck while down can notice the recovery in time.
        interval_seconds=60,
        probe_timeout_seconds=0.2,
        recheck_while_down_seconds=0.1,
    )
    stopping = asyncio.Event()
    running = asyncio.create_task(health.run(stopping))
    try:
        await asyncio.sleep(0.05)
        assert await status(servicer, "") == NOT_SERVING
        state["probe"] = up
        await asyncio.sleep(0.3)
        assert await status(servicer, "") == SERVING
    finally:
        stopping.set()
        await asyncio.wait_for(running, 1)
