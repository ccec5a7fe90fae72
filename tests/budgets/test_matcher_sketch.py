"""Matcher semantics and the quantile sketch against exact computation."""

from __future__ import annotations

import math
import random

import pytest

from otelkit.budgets.check import exact_quantile
from otelkit.budgets.findings import service_name
from otelkit.budgets.matcher import BudgetMatcher, attribute_texts
from otelkit.budgets.model import parse_budgets
from otelkit.budgets.sketch import DDSketch, WindowedSketch
from tests.budgets.spans import S, all_spans, request

BUDGETS = {
    "checkout": {
        "match": {"service": "shop-*", "span_kind": "server", "route": "/checkout*"},
        "max": "2s",
    },
    "search": {
        "match": {"route": ["/search", "/find/?"], "attributes": {"http.request.method": "GET"}},
        "max": "1s",
    },
    "postgres": {"match": {"span_kind": "client", "db_system": "postgresql"}, "max": "500ms"},
    "payments": {"match": {"peer_service": "pay*", "span_name": "POST *"}, "max": "3s"},
    "tier": {"match": {"attributes": {"deployment.environment": "prod"}}, "max": "9s"},
    "servers": {"match": {"span_kind": "server"}, "max": "5s"},
}


def owner(span: S, service: str = "shop-api", **resource: str) -> str | None:
    matcher = BudgetMatcher(parse_budgets({"budgets": BUDGETS}).budgets)
    req = request([span], service, **resource)
    rs = req.resource_spans[0]
    candidates = matcher.for_service(service_name(rs.resource.attributes))
    resource_attrs = attribute_texts(rs.resource.attributes, matcher.wanted_keys)
    found = matcher.match(all_spans(req)[0], candidates, resource_attrs)
    # The per-kind path the processor takes agrees, also when its answer is remembered
    # across spans and resources (a matcher shared by every case, asked twice).
    span_ = all_spans(req)[0]
    resource_key = tuple(sorted(resource_attrs.items()))
    for _ in range(2):
        by_kind = SHARED_MATCHER.for_kind(service_name(rs.resource.attributes), span_.kind)
        via_kind = by_kind.match(span_, resource_attrs, resource_key) if by_kind else None
        assert (via_kind.name if via_kind else None) == (found.name if found else None)
    return found.name if found else None


SHARED_MATCHER = BudgetMatcher(parse_budgets({"budgets": BUDGETS}).budgets)


@pytest.mark.parametrize(
    ("span", "service", "expected"),
    [
        (S("GET /checkout/cart", attrs={"http.route": "/checkout/cart"}), "shop-api", "checkout"),
        # service glob does not match: the next budget that matches wins
        (S("GET /checkout", attrs={"http.route": "/checkout"}), "admin", "servers"),
        # kind must match: a client span on the route is not the checkout budget's
        (S("GET", kind="client", attrs={"http.route": "/checkout"}), "shop-api", None),
        (S("GET", attrs={"http.route": "/find/x", "http.request.method": "GET"}), "x", "search"),
        (S("GET", attrs={"http.route": "/find/xy", "http.request.method": "GET"}), "x", "servers"),
        (S("POST", attrs={"http.route": "/search", "http.request.method": "POST"}), "x", "servers"),
        # the older db.system name is read when db.system.name is absent
        (S("SELECT", kind="client", attrs={"db.system": "postgresql"}), "x", "postgres"),
        (
            S(
                "SELECT",
                kind="client",
                attrs={"db.system.name": "postgresql", "db.system": "mysql"},
            ),
            "x",
            "postgres",
        ),
        (S("SELECT", kind="client", attrs={"db.system": "sqlite"}), "x", None),
        (S("POST /charge", kind="client", attrs={"peer.service": "payments"}), "x", "payments"),
        (S("GET /charge", kind="client", attrs={"peer.service": "payments"}), "x", None),
    ],
)
def test_first_matching_budget_owns_the_span(span: S, service: str, expected: str | None) -> None:
    assert owner(span, service) == expected


def test_attribute_conditions_fall_back_to_resource_attributes() -> None:
    span = S("work", kind="internal")
    assert owner(span, "x", **{"deployment.environment": "prod"}) == "tier"
    assert owner(span, "x", **{"deployment.environment": "dev"}) is None


def test_matcher_reads_only_the_attributes_budgets_name() -> None:
    matcher = BudgetMatcher(parse_budgets({"budgets": BUDGETS}).budgets)
    assert matcher.wanted_keys == {
        "http.route",
        "http.request.method",
        "db.system.name",
        "db.system",
        "peer.service",
        "service.peer.name",
        "deployment.environment",
    }


@pytest.mark.parametrize("accuracy", [0.01, 0.02])
def test_sketch_quantiles_are_within_the_stated_relative_error(accuracy: float) -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(3.0, 1.2) for _ in range(20_000)]
    values += [0.0] * 50 + [rng.uniform(5000, 20000) for _ in range(200)]
    sketch = DDSketch(accuracy)
    for v in values:
        sketch.add(v)
    exact = sorted(values)
    for q in (0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0):
        truth = exact_quantile(exact, q)
        estimate = sketch.quantile(q)
        assert estimate is not None
        assert math.isclose(estimate, truth, rel_tol=accuracy, abs_tol=1e-9), (q, estimate, truth)
    assert sketch.count == len(values)


def test_sketch_memory_is_bounded_and_upper_quantiles_survive_collapsing() -> None:
    sketch = DDSketch(0.01, max_buckets=200)
    values = [10 ** (i / 1000) for i in range(-3000, 6000)]  # 1e-3 .. 1e6: ~2000 buckets
    for v in values:
        sketch.add(v)
    assert len(sketch.buckets) <= 200
    exact = sorted(values)
    for q in (0.95, 0.99):
        assert math.isclose(sketch.quantile(q) or 0, exact_quantile(exact, q), rel_tol=0.01)


def test_windowed_sketch_reports_each_window_separately() -> None:
    w = WindowedSketch(window=60, quantiles=(0.5,))
    w.roll(1000.0)
    for v in (10, 20, 30):
        w.sketch.add(v)
    assert w.roll(1059.0) is None  # same window
    closed = w.roll(1061.0)
    assert closed is not None and closed.count == 3
    assert math.isclose(closed.quantiles[0.5] or 0, 20, rel_tol=0.01)
    assert w.sketch.count == 0 and w.start == 1060.0


def test_quantiles_in_one_pass_equal_each_quantile() -> None:
    rng = random.Random(5)
    sketch = DDSketch(0.01, max_buckets=100)
    qs = (0.0, 0.5, 0.9, 0.95, 0.99, 1.0)
    for _ in range(5):
        sketch.add_many([rng.lognormvariate(2, 2) for _ in range(300)] + [0.0] * 10)
        exact = sorted(sketch.buckets)
        walked = []
        for q in qs:  # the definition: walk the sorted buckets up to the rank
            rank, seen = math.floor(q * (sketch.count - 1)), sketch.zero_count
            value = 0.0 if seen > rank else None
            for index in exact:
                seen += sketch.buckets[index]
                if value is None and seen > rank:
                    value = 2 * math.exp(index * math.log(1.01 / 0.99)) / (1 + 1.01 / 0.99)
            walked.append(value)
        got = sketch.quantiles(qs)
        assert all(
            math.isclose(g or 0, w or 0, rel_tol=1e-9) for g, w in zip(got, walked, strict=True)
        )
        assert got == [sketch.quantile(q) for q in qs]


def test_adding_a_batch_equals_adding_one_by_one() -> None:
    rng = random.Random(3)
    values = [rng.expovariate(0.01) for _ in range(5000)] + [0.0, 1e-9]
    one, many = DDSketch(), DDSketch()
    for v in values:
        one.add(v)
    many.add_many(values[:2000])
    many.add_many(values[2000:])
    assert (one.buckets, one.zero_count, one.count, one.max) == (
        many.buckets,
        many.zero_count,
        many.count,
        many.max,
    )


@pytest.mark.parametrize("max_buckets", [2048, 40])
def test_is_over_agrees_with_the_quantile(max_buckets: int) -> None:
    """The kept counts answer "percentile over the limit" as computing it would, also
    across collapsed buckets, merges and limits on bucket edges or at zero."""
    rng = random.Random(11)
    sketch = DDSketch(0.02, max_buckets=max_buckets)
    probe = DDSketch(0.02)
    probe.add(50.0)
    on_edge = probe.quantile(0.0) or 0.0  # exactly a bucket's value
    limits = [0.0, -1.0, 1.0, on_edge, 1e9, *(rng.uniform(5, 500) for _ in range(20))]
    for limit in limits:
        sketch.watch(limit)
    qs = (0.0, 0.5, 0.95, 0.99, 1.0)
    for round_ in range(30):
        values = [rng.lognormvariate(3.5, 1.5) for _ in range(rng.randrange(1, 60))]
        values += [0.0] * rng.randrange(12)
        if round_ % 3:
            sketch.add_many(values)
        else:
            for v in values:
                sketch.add(v)
        if round_ == 20:
            other = DDSketch(0.02)
            other.add_many([rng.uniform(1, 5000) for _ in range(500)])
            sketch.merge(other)
        for q in qs:
            observed = sketch.quantile(q)
            assert observed is not None
            for limit in limits:
                assert sketch.is_over(q, limit) == (observed > limit), (q, limit, observed)


def test_windows_watch_their_limits_after_rolling() -> None:
    w = WindowedSketch(window=60, quantiles=(0.5,), watched=(20.0,))
    w.roll(1000.0)
    w.sketch.add_many([10.0, 30.0, 40.0])
    assert w.sketch.is_over(0.5, 20.0)
    w.roll(1061.0)
    w.sketch.add_many([10.0, 11.0, 40.0])
    assert not w.sketch.is_over(0.5, 20.0)


def test_remembered_owners_stay_bounded_and_unknown_kinds_match() -> None:
    from otelkit.budgets import matcher as matcher_module

    matcher = BudgetMatcher(parse_budgets({"budgets": BUDGETS}).budgets)
    candidates = matcher.for_kind("shop-api", 2)
    assert candidates is not None
    for i in range(matcher_module._MATCH_CACHE_SIZE + 10):
        span = all_spans(request([S("GET", attrs={"http.route": f"/checkout/{i}"})]))[0]
        found = candidates.match(span, {}, ())
        assert found is not None and found.name == "checkout"
    assert len(matcher._match_cache) <= matcher_module._MATCH_CACHE_SIZE
    for kind in range(6, 100):  # kinds outside the enum: still matched, a few remembered
        odd = matcher.for_kind("x", kind)
        assert odd is not None and [b.name for b in odd.budgets] == ["search", "payments", "tier"]
    assert len(matcher.by_kind("x")) <= 16
