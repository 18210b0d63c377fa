"""The worker's consumer lag gauge reports the partitions the worker holds now, and no other:
a partition given to another worker is summed once, by its new owner."""

from __future__ import annotations

from prometheus_client import generate_latest

from server.worker.main import WorkerMetrics


def lag_lines(metrics: WorkerMetrics) -> list[str]:
    text = generate_latest(metrics.registry).decode()
    return sorted(
        line for line in text.splitlines() if line.startswith("chat_worker_consumer_lag_records{")
    )


def test_a_partition_no_longer_held_is_no_longer_reported() -> None:
    metrics = WorkerMetrics()
    metrics.lags({("chat.messages.v1", 0): 5, ("chat.messages.v1", 1): 3})
    assert lag_lines(metrics) == [
        'chat_worker_consumer_lag_records{partition="0",topic="chat.messages.v1"} 5.0',
        'chat_worker_consumer_lag_records{partition="1",topic="chat.messages.v1"} 3.0',
    ]
    metrics.lags({("chat.messages.v1", 1): 2})  # partition 0 went to another worker
    assert lag_lines(metrics) == [
        'chat_worker_consumer_lag_records{partition="1",topic="chat.messages.v1"} 2.0'
    ]
    metrics.lags({})
    assert lag_lines(metrics) == []
