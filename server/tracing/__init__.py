"""OpenTelemetry traces: set up once per process (``setup``), used on the hot path through the
small helpers of ``spans`` and ``propagation``, which cost a flag check while tracing is off."""
