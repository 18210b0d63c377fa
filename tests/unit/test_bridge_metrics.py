"""The bridge's metrics: every answer timed and counted by status, a refusal by its reason."""

from __future__ import annotations

from webhook_bridge.metrics import BridgeMetrics


def test_answers_are_timed_and_refusals_counted_by_reason() -> None:
    metrics = BridgeMetrics()
    metrics.answered("whatsapp", 200, 0.02)
    metrics.answered("whatsapp", 401, 0.001)
    metrics.answered("slack", 403, 0.001)
    metrics.answered("slack", 418, 0.001)  # a status without a reason of its own
    value = metrics.registry.get_sample_value
    assert value("chat_bridge_ack_seconds_count", {"platform": "whatsapp"}) == 2
    assert value("chat_bridge_webhooks_total", {"platform": "whatsapp", "status": "200"}) == 1
    refused = "chat_bridge_webhooks_refused_total"
    assert value(refused, {"platform": "whatsapp", "reason": "unsigned"}) == 1
    assert value(refused, {"platform": "slack", "reason": "bad_signature"}) == 1
    assert value(refused, {"platform": "slack", "reason": "other"}) == 1
    assert value(refused, {"platform": "whatsapp", "reason": "other"}) is None


def test_open_sockets_are_read_from_the_gateway_on_each_scrape() -> None:
    metrics = BridgeMetrics()
    sockets = {"a", "b"}
    metrics.watch_sockets(lambda: len(sockets))
    assert metrics.registry.get_sample_value("chat_bridge_web_sockets_open") == 2
    sockets.clear()
    assert metrics.registry.get_sample_value("chat_bridge_web_sockets_open") == 0
