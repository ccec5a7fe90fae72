"""The scrape exporter's cumulative store: temporality, resets, staleness, expiry."""

from __future__ import annotations

import pytest
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric

from otelkit.collector.exporters.prometheus.merge import merge_snapshots
from otelkit.collector.exporters.prometheus.store import CumulativeStore
from otelkit.collector.exporters.prometheus.translation import (
    HistogramPoint,
    NumberPoint,
    Rejected,
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


def ingest_counted(store: CumulativeStore, *metrics: Metric) -> dict[str, int]:
    rejected = Rejected()
    store.ingest(translate(metrics_request(*metrics), TranslationOptions()), rejected)
    return rejected.by_reason


CLASHES = [
    # (first, second): the second writes a name the first owns in some format
    (sum_metric("requests", 1), gauge_metric("requests", 2)),  # requests_total is `requests` in OM
    (sum_metric("requests", 1), gauge_metric("requests_total", 2)),
    (gauge_metric("a.b", 1), sum_metric("a_b", 2)),
    (histogram_metric("latency", [1], [1, 0], 0.5), gauge_metric("latency.seconds.count", 2)),
    (gauge_metric("latency.seconds.bucket", 2), histogram_metric("latency", [1], [1, 0], 0.5)),
]


@pytest.mark.parametrize(("first", "second"), CLASHES)
def test_the_first_family_keeps_a_name_and_a_clashing_one_is_refused_and_counted(
    first: Metric, second: Metric
) -> None:
    """Two families writing one name make the scrape unparseable; replacing the first
    would hide every series of the app that sent it."""
    store = CumulativeStore(0)
    assert ingest_counted(store, first) == {}
    before = store.snapshot()
    assert sum(ingest_counted(store, second).values()) == 1
    assert store.snapshot() == before


def test_a_name_is_free_again_once_its_family_has_expired() -> None:
    clock = FakeClock()
    store = CumulativeStore(300, clock)
    ingest_counted(store, sum_metric("requests", 1))
    clock.now += 301
    store.expire()
    assert ingest_counted(store, gauge_metric("requests", 2)) == {}
    assert store.point("requests", LABELS) is not None


def test_a_name_is_free_again_once_its_last_series_is_gone() -> None:
    store = CumulativeStore(0)
    ingest_counted(store, sum_metric("requests", 1))
    ingest_counted(store, sum_metric("requests", 0, end=T0 + 2 * SECOND, flags=1))
    assert ingest_counted(store, gauge_metric("requests", 2)) == {}


def test_target_info_is_always_the_resources_gauge() -> None:
    store = CumulativeStore(0)
    assert sum(ingest_counted(store, sum_metric("target.info", 1)).values()) == 1
    request = metrics_request(
        gauge_metric("g", 1), resource={"service.name": "s", "host.name": "h"}
    )
    store.ingest(translate(request, TranslationOptions()))
    assert [f.family.name for f in store.snapshot()] == ["g", "target_info"]


def test_the_workers_view_shows_the_first_of_two_clashing_families() -> None:
    """Each worker's store owns its names alone; the merged scrape must still parse."""
    workers = []
    for metric in (sum_metric("requests", 1), gauge_metric("requests", 2)):
        store = CumulativeStore(0)
        ingest_counted(store, metric)
        workers.append(store.snapshot())
    merged = merge_snapshots(workers)
    assert [(f.family.name, f.family.kind) for f in merged] == [("requests_total", "counter")]
