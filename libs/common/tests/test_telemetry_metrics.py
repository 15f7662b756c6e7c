from __future__ import annotations

import random

import pytest
from prometheus_client.parser import text_string_to_metric_families

from backbone.telemetry import LogHistogram, Metrics, TelemetryError


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _samples(metrics):
    body, _ = metrics.render()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def test_histogram_percentiles_are_within_two_percent_with_bounded_memory():
    rng = random.Random(7)
    values = [rng.lognormvariate(-6, 1.5) for _ in range(50_000)]
    hist = LogHistogram()
    for value in values:
        hist.record(value)
    ordered = sorted(values)
    for fraction in (0.5, 0.9, 0.99):
        exact = ordered[int(fraction * len(ordered)) - 1]
        assert hist.percentile(fraction) == pytest.approx(exact, rel=0.02)
    assert hist.count == 50_000
    assert hist.bucket_count < 1200
    assert hist.percentile(1.0) == max(values)


def test_histogram_edge_cases():
    hist = LogHistogram()
    assert hist.percentile(0.99) == 0.0
    assert hist.mean == 0.0
    hist.record(0.0042)
    assert hist.percentile(0.5) == 0.0042  # a single sample is exact
    hist.record(-1.0)
    hist.record(1e9)
    assert hist.min == 0.0
    assert hist.max == 1e9


def test_each_instance_has_its_own_registry():
    first, second = Metrics(), Metrics()
    first.record_published(stream="S", event_type="a.b")
    assert first.registry is not second.registry
    assert ("backbone_events_published_total", (("stream", "S"), ("type", "a.b"))) in _samples(
        first
    )
    assert not any(name == "backbone_events_published_total" for name, _ in _samples(second))


def test_render_exposes_the_messaging_instruments_in_prometheus_text():
    metrics = Metrics()
    metrics.record_published(stream="MCP_EVENTS", event_type="mcp.x", latency_s=0.002)
    metrics.record_published(stream="MCP_EVENTS", event_type="mcp.x", duplicate=True)
    metrics.record_publish_failure(event_type="mcp.x", error="PublishTimeoutError")
    metrics.record_handled(stream="MCP_EVENTS", event_type="mcp.x", latency_s=0.01)
    metrics.record_handled(
        stream="MCP_EVENTS", event_type="mcp.x", latency_s=0.02, error="ValueError"
    )
    metrics.record_dead_lettered(stream="MCP_EVENTS", event_type="mcp.x")
    metrics.set_gauge("consumer_pending", 42)
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    samples = _samples(metrics)
    labels = (("stream", "MCP_EVENTS"), ("type", "mcp.x"))
    assert samples[("backbone_events_published_total", labels)] == 2
    assert samples[("backbone_publish_duplicates_total", (("stream", "MCP_EVENTS"),))] == 1
    failure = (("error", "PublishTimeoutError"), ("type", "mcp.x"))
    assert samples[("backbone_publish_failures_total", failure)] == 1
    assert samples[("backbone_events_consumed_total", labels)] == 2
    handler_failure = (("error", "ValueError"), ("stream", "MCP_EVENTS"), ("type", "mcp.x"))
    assert samples[("backbone_handler_failures_total", handler_failure)] == 1
    assert samples[("backbone_events_dead_lettered_total", labels)] == 1
    assert samples[("backbone_handler_latency_seconds_count", labels)] == 2
    assert samples[("backbone_publish_latency_seconds_count", (("stream", "MCP_EVENTS"),))] == 1
    assert samples[("backbone_consumer_pending", ())] == 42
    assert b"# HELP backbone_handler_latency_seconds" in body


def test_factories_return_the_same_instrument_and_refuse_conflicts():
    metrics = Metrics()
    counter = metrics.counter("webhooks", "Webhooks received.", ("provider",))
    assert metrics.counter("webhooks", "Webhooks received.", ("provider",)) is counter
    counter.labels("github").inc(3)
    assert _samples(metrics)[("backbone_webhooks_total", (("provider", "github"),))] == 3
    with pytest.raises(TelemetryError):
        metrics.gauge("webhooks", "x")
    with pytest.raises(TelemetryError):
        metrics.counter("webhooks", "x", ("other",))
    with pytest.raises(TelemetryError):
        metrics.histogram("Bad-Name", "x")
    hist = metrics.histogram("rule_seconds", "Rule time.", buckets=(0.1, 1.0))
    hist.observe(0.5)
    assert _samples(metrics)[("backbone_rule_seconds_bucket", (("le", "1.0"),))] == 1
    assert metrics.gauge("queue_depth", "Depth.") is metrics.gauge("queue_depth", "Depth.")


def test_gauge_names_cannot_shadow_snapshot_metrics():
    with pytest.raises(TelemetryError):
        Metrics().set_gauge("events_published_per_s", 1)


def test_windows_turn_counts_into_rates_and_percentiles_and_then_reset():
    clock = FakeClock()
    metrics = Metrics(clock=clock)
    for index in range(100):
        metrics.record_handled(
            stream="S",
            event_type="t",
            latency_s=(index + 1) / 1000,
            error="E" if index < 5 else None,
        )
    for _ in range(50):
        metrics.record_published(stream="S", event_type="t", latency_s=0.001)
    metrics.record_publish_failure(event_type="t", error="E")
    metrics.record_dead_lettered(stream="S", event_type="t")
    metrics.set_gauge("consumer_pending", 9)
    clock.now += 10.0
    values = metrics.take_window().to_metrics()
    assert values["events_consumed_per_s"] == pytest.approx(10.0)
    assert values["events_consumed"] == 100
    assert values["handler_errors"] == 5
    assert values["handler_errors_per_s"] == pytest.approx(0.5)
    assert values["handler_error_ratio"] == pytest.approx(0.05)
    assert values["events_published_per_s"] == pytest.approx(5.0)
    assert values["publish_errors"] == 1
    assert values["dead_lettered_per_s"] == pytest.approx(0.1)
    assert values["handler_latency_p50_ms"] == pytest.approx(50, rel=0.02)
    assert values["handler_latency_p90_ms"] == pytest.approx(90, rel=0.02)
    assert values["handler_latency_p99_ms"] == pytest.approx(99, rel=0.02)
    assert values["handler_latency_max_ms"] == pytest.approx(100)
    assert values["publish_latency_p99_ms"] == pytest.approx(1.0)
    assert values["consumer_pending"] == 9

    clock.now += 5.0
    empty = metrics.take_window()
    assert empty.elapsed_s == 5.0
    values = empty.to_metrics()
    assert values["events_consumed_per_s"] == 0.0
    assert values["handler_latency_p99_ms"] == 0.0
    assert values["consumer_pending"] == 9  # levels persist across windows


def test_hot_instruments_expose_what_prometheus_client_instruments_expose():
    from prometheus_client import CollectorRegistry, Counter, Histogram  # noqa: PLC0415
    from prometheus_client.exposition import generate_latest  # noqa: PLC0415

    metrics = Metrics()
    hot_counter = metrics.hot_counter("requests", "Requests.", ("route", "status"))
    hot_histogram = metrics.hot_histogram("seconds", "Durations.", ("route",), buckets=(0.1, 1.0))
    registry = CollectorRegistry()
    counter = Counter("requests", "Requests.", ("route", "status"), registry=registry,
                      namespace="backbone")  # fmt: skip
    histogram = Histogram("seconds", "Durations.", ("route",), registry=registry,
                          namespace="backbone", buckets=(0.1, 1.0))  # fmt: skip
    samples = [0.05, 0.1, 0.5, 1.0, 7.0, 0.1000001]
    with metrics.lock:
        for value in samples:
            hot_counter.inc(("/a", "202"))
            hot_histogram.observe(("/a",), value)
    for value in samples:
        counter.labels("/a", "202").inc()
        histogram.labels("/a").observe(value)

    def lines(text: bytes) -> list[bytes]:
        return [line for line in text.splitlines() if b"_created" not in line]

    theirs = lines(generate_latest(registry))
    ours = lines(metrics.render()[0])
    assert all(line in ours for line in theirs), (theirs, ours)
    assert hot_counter.value(("/a", "202")) == len(samples)
    assert hot_histogram.count(("/a",)) == len(samples)
    with pytest.raises(TelemetryError):
        metrics.counter("requests", "x", ("route", "status"))
    assert metrics.hot_counter("requests", "Requests.", ("route", "status")) is hot_counter
