"""RPC metrics: a duration histogram by method and final code, calls in flight and open
server streams by method.

The request-id interceptor reports to it (request_context.py), so the code recorded is the
one the caller gets and no interceptor layer of its own is added to each call. Its cost per
call is two dictionary lookups, a gauge step each way and one histogram observation: the
labels' children are looked up once per method and code, never per call. Labels are the
method and the code only; the method names come from the registered handlers (grpc answers
an unknown method before any interceptor), so their number is fixed.
"""

from __future__ import annotations

from prometheus_client import Gauge, Histogram

from server.metrics import Metrics


class RpcMetrics:
    """Calls in flight, open streams and durations, by method (and final code)."""

    def __init__(self, *, metrics: Metrics) -> None:
        self._metrics = metrics
        self._in_flight: dict[str, Gauge] = {}
        self._streams: dict[str, Gauge] = {}
        self._durations: dict[tuple[str, str], Histogram] = {}

    def call_started(self, method_name: str) -> None:
        self._in_flight_gauge(method_name).inc()

    def stream_started(self, method_name: str) -> None:
        """A stream's first step (one never iterated is never counted)."""
        self._in_flight_gauge(method_name).inc()
        streams = self._streams.get(method_name)
        if streams is None:
            streams = self._streams[method_name] = self._metrics.rpc_open_streams.labels(
                method_name
            )
        streams.inc()

    def stream_stopped(self, method_name: str) -> None:
        self._streams[method_name].dec()

    def call_ended(self, method_name: str, code: str, seconds: float) -> None:
        """A started call or stream ended with ``code`` after ``seconds``."""
        self._in_flight[method_name].dec()
        key = (method_name, code)
        duration = self._durations.get(key)
        if duration is None:
            duration = self._durations[key] = self._metrics.rpc_duration.labels(*key)
        duration.observe(seconds)

    def _in_flight_gauge(self, method_name: str) -> Gauge:
        in_flight = self._in_flight.get(method_name)
        if in_flight is None:
            in_flight = self._in_flight[method_name] = self._metrics.rpc_in_flight.labels(
                method_name
            )
        return in_flight
