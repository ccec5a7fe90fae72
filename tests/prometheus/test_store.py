"""The scrape exporter's cumulative store: temporality, resets, staleness, expiry."""

from __future__ import annotations

from otelkit.collector.exporters.prometheus.store import CumulativeStore
from otelkit.collector.exporters.prometheus.translation import (
    HistogramPoint,
    NumberPoint,
    TranslationOptions,
    translate,
)
from tests.prometheus.payloads import (
    DELTA,
    SECOND,
    T0,
    gauge_metric,
    histogram_metric,
    metrics_request,
    sum_metric,
)

LABELS = (("job", "shop"), ("otel_scope_name", "test.scope"))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ingest(store: CumulativeStore, *metrics: object) -> None:
    store.ingest(translate(metrics_request(*metrics), TranslationOptions()))  # type: ignore[arg-type]


def counter_value(store: CumulativeStore, name: str = "requests_total") -> float:
    point = store.point(name, LABELS)
    assert isinstance(point, NumberPoint)
    return point.value


def test_contiguous_delta_points_accumulate() -> None:
    store = CumulativeStore(0)
    ingest(store, sum_metric("requests", 5, start=T0, end=T0 + SECOND, temporality=DELTA))
    ingest(
        store, sum_metric("requests", 3, start=T0 + SECOND, end=T0 + 2 * SECOND, temporality=DELTA)
    )
    ingest(
        store,
        sum_metric("requests", 2, start=T0 + 2 * SECOND, end=T0 + 3 * SECOND, temporality=DELTA),
    )
    assert counter_value(store) == 10
    point = store.point("requests_total", LABELS)
    assert isinstance(point, NumberPoint) and point.start_ns == T0


def test_a_gap_between_delta_points_is_a_reset() -> None:
    store = CumulativeStore(0)
    ingest(store, sum_metric("requests", 5, start=T0, end=T0 + SECOND, temporality=DELTA))
    ingest(
        store,
        sum_metric("requests", 3, start=T0 + 5 * SECOND, end=T0 + 6 * SECOND, temporality=DELTA),
    )
    assert counter_value(store) == 3


def test_an_old_delta_point_is_ignored() -> None:
    store = CumulativeStore(0)
    ingest(
        store, sum_metric("requests", 5, start=T0 + SECOND, end=T0 + 2 * SECOND, temporality=DELTA)
    )
    ingest(store, sum_metric("requests", 7, start=T0, end=T0 + SECOND, temporality=DELTA))
    assert counter_value(store) == 5


def test_delta_histograms_accumulate_bucket_by_bucket() -> None:
    store = CumulativeStore(0)
    ingest(store, histogram_metric("latency", [1, 2], [1, 0, 1], 3.5, start=T0, end=T0 + SECOND,
                                   temporality=DELTA))  # fmt: skip
    ingest(store, histogram_metric("latency", [1, 2], [0, 2, 0], 3.0, start=T0 + SECOND,
                                   end=T0 + 2 * SECOND, temporality=DELTA))  # fmt: skip
    point = store.point("latency_seconds", LABELS)
    assert isinstance(point, HistogramPoint)
    assert point.counts == (1, 2, 1)
    assert point.count == 4
    assert point.sum == 6.5


def test_cumulative_counter_reset_is_passed_through_with_its_new_start() -> None:
    store = CumulativeStore(0)
    ingest(store, sum_metric("requests", 100, start=T0, end=T0 + 10 * SECOND))
    ingest(store, sum_metric("requests", 4, start=T0 + 11 * SECOND, end=T0 + 12 * SECOND))
    point = store.point("requests_total", LABELS)
    assert isinstance(point, NumberPoint)
    assert (point.value, point.start_ns) == (4, T0 + 11 * SECOND)


def test_an_out_of_order_cumulative_point_does_not_go_back_in_time() -> None:
    store = CumulativeStore(0)
    ingest(store, sum_metric("requests", 10, end=T0 + 2 * SECOND))
    ingest(store, sum_metric("requests", 7, end=T0 + SECOND))
    assert counter_value(store) == 10


def test_a_point_with_no_recorded_value_removes_the_series() -> None:
    store = CumulativeStore(0)
    ingest(store, sum_metric("requests", 10))
    ingest(store, sum_metric("requests", 0, end=T0 + 2 * SECOND, flags=1))
    assert store.point("requests_total", LABELS) is None


def test_quiet_series_expire_and_busy_ones_stay() -> None:
    clock = FakeClock()
    store = CumulativeStore(300, clock)
    ingest(store, sum_metric("requests", 1), gauge_metric("temperature", 20))
    clock.now += 200
    ingest(store, sum_metric("requests", 2, end=T0 + 200 * SECOND))
    clock.now += 150
    generation = store.generation
    assert store.expire() == 1
    assert store.point("temperature", LABELS) is None
    assert counter_value(store) == 2
    assert store.generation != generation, "a scrape after expiry must not serve the cache"


def test_zero_expiration_keeps_series_forever() -> None:
    clock = FakeClock()
    store = CumulativeStore(0, clock)
    ingest(store, gauge_metric("temperature", 20))
    clock.now += 10**6
    assert store.expire() == 0
    assert len(store) == 1


def test_a_newer_point_without_exemplars_keeps_the_previous_ones() -> None:
    store = CumulativeStore(0)
    first = histogram_metric("latency", [1, 2], [1, 0, 0], 0.5, end=T0 + SECOND)
    first.histogram.data_points[0].exemplars.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8,
                                                 as_double=0.5, time_unix_nano=T0)  # fmt: skip
    ingest(store, first)
    ingest(store, histogram_metric("latency", [1, 2], [2, 0, 0], 1.0, end=T0 + 2 * SECOND))
    point = store.point("latency_seconds", LABELS)
    assert isinstance(point, HistogramPoint)
    assert point.count == 2
    assert point.exemplars[0] is not None
    assert dict(point.exemplars[0].labels)["trace_id"] == "01" * 16
