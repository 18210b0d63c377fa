"""Dependency health behind the standard ``grpc.health.v1`` service.

Each dependency is reported under its own name (``mongodb``, ``redis``, ``kafka``). The
overall status (service name ``""``) and each chat.v1 service follow the *required*
dependencies only: with Kafka down the service still takes messages (events wait in the
outbox), so Kafka is reported but does not make the service NOT_SERVING.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog
from grpc_health.v1 import health_pb2

# grpc-stubs predates the asyncio health servicer, which grpcio-health-checking ships as `aio`.
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

log = structlog.get_logger("chat.health")

#: A health name SERVING from the moment the server serves until it stops, whatever its
#: dependencies: a liveness probe (a restart cures a stuck process, not a database outage).
LIVENESS = "liveness"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
#: While a dependency is down it is probed this often (or at the interval, if shorter), so
#: that health follows its recovery within about this long rather than a whole interval later.
RECHECK_WHILE_DOWN_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class Dependency:
    """Something the service talks to, and how to tell that it answers."""

    name: str
    probe: Callable[[], Awaitable[object]]
    required: bool


class HealthMonitor:
    """Probes dependencies on an interval (more often while one is down) and publishes the
    results to the health servicer."""

    def __init__(
        self,
        *,
        servicer: health_aio.HealthServicer,
        dependencies: Sequence[Dependency],
        service_names: Sequence[str],
        interval_seconds: float,
        probe_timeout_seconds: float = 3.0,
        recheck_while_down_seconds: float = RECHECK_WHILE_DOWN_SECONDS,
    ) -> None:
        self._servicer = servicer
        self._dependencies = tuple(dependencies)
        self._service_names = ("", *service_names)
        self._interval = interval_seconds
        self._timeout = probe_timeout_seconds
        self._recheck = min(interval_seconds, recheck_while_down_seconds)
        self._up: dict[str, bool] = {}

    async def check_once(self) -> dict[str, bool]:
        """Probe every dependency concurrently, update the servicer, return name -> up."""
        results = await asyncio.gather(*(self._probe(dep) for dep in self._dependencies))
        for dep, up in zip(self._dependencies, results, strict=True):
            if self._up.get(dep.name) != up:
                (log.info if up else log.warning)(
                    "dependency " + ("up" if up else "down"), dependency=dep.name
                )
            self._up[dep.name] = up
            await self._servicer.set(dep.name, SERVING if up else NOT_SERVING)
        overall = all(self._up[dep.name] for dep in self._dependencies if dep.required)
        for name in self._service_names:
            await self._servicer.set(name, SERVING if overall else NOT_SERVING)
        return dict(self._up)

    async def run(self, stopping: asyncio.Event) -> None:
        """Check every interval until ``stopping`` is set. The loop ends between checks rather
        than being cancelled inside one: a driver call cancelled mid-connect can leak its
        socket."""
        while not stopping.is_set():
            up = await self.check_once()
            wait = self._interval if all(up.values()) else self._recheck
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), wait)

    async def _probe(self, dependency: Dependency) -> bool:
        try:
            await asyncio.wait_for(dependency.probe(), self._timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of a probe means "down"
            log.debug("probe failed", dependency=dependency.name, error=repr(exc))
            return False
        return True
