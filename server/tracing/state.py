"""Whether this process traces: decided once at start-up, before anything is instrumented.

The helpers read ``STATE.enabled`` and do nothing else while it is false, so a process without
an exporter pays a flag check per hook, and what a call site builds for it (bench part
``tracing``, figure ``tracing_off_hooks_share_of_cpu``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class TracingState:
    """Set by ``server.tracing.setup.configure_tracing``; read by the hooks."""

    enabled: bool = False


STATE = TracingState()
