"""A small terminal chart: messages in and out per channel over time, as block bars."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from chat.v1 import analytics_service_pb2 as analytics
from chat_client.cli.output import channel_name

BLOCKS = " ▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[int], peak: int) -> str:
    """One block character per value, scaled to ``peak`` (a non-zero value never blank)."""
    if peak <= 0:
        return BLOCKS[0] * len(values)
    top = len(BLOCKS) - 1
    return "".join(
        BLOCKS[max(1, round(value / peak * top))] if value else BLOCKS[0] for value in values
    )


def chart(
    minutes: Sequence[analytics.AnalyticsMinute],
    start: dt.datetime,
    end: dt.datetime,
    width: int = 60,
) -> list[str]:
    """Lines of the chart: for each channel, messages in and out per time bucket."""
    span = max(60.0, (end - start).total_seconds())
    buckets = max(1, min(width, int(span // 60)))
    size = span / buckets
    series: dict[tuple[str, str], list[int]] = {}
    for minute in minutes:
        moment = minute.minute_start_time.ToDatetime(tzinfo=dt.UTC)
        index = min(buckets - 1, max(0, int((moment - start).total_seconds() // size)))
        name = channel_name(minute.channel)
        for direction, count in (
            ("in", minute.figures.messages_in),
            ("out", minute.figures.messages_out),
        ):
            series.setdefault((name, direction), [0] * buckets)[index] += count
    if not series:
        return ["(no messages in the period)"]
    peak = max(max(values) for values in series.values())
    label = max(len(f"{name} {direction}") for name, direction in series)
    lines = [
        f"{f'{name} {direction}':<{label}} |{sparkline(values, peak)}| {sum(values)}"
        for (name, direction), values in sorted(series.items())
    ]
    axis_left = start.strftime("%H:%M")
    axis_right = end.strftime("%H:%M")
    gap = max(1, buckets - len(axis_left) - len(axis_right))
    lines.append(f"{'':<{label}}  {axis_left}{' ' * gap}{axis_right}  (UTC, peak {peak}/bucket)")
    return lines
