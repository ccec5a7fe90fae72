"""Splitting an export request by routing key: one request per backend.

Every item is routed by its key; items of one resource and scope that go to the same
backend stay together under a copy of that resource and scope. A request whose items all
go to one backend is passed on whole, not copied.

Keys: ``traceID`` the 16 trace-id bytes of a span or log record (log records without a
trace ID: one random key per request, so they spread over the backends and stay in one
request); ``service`` the resource's ``service.name``; ``resource`` the resource's
attributes; ``metric`` the metric name; ``streamID`` resource, scope, metric name and the
data point's attributes, so each time series stays on one backend.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from otelkit.collector.pdata.signals import Payload, Signal, signal_of
from otelkit.collector.pdata.split import LAYOUT, shell
from otelkit.collector.pdata.wire import scope_spans_layout, span_field_starts

Route = Callable[[bytes], int]
"""Backend index of a key (``HashRing.index_for``)."""


def split(payload: Payload, routing_key: str, route: Route) -> dict[int, Payload]:
    """``payload``'s items as one request per backend index (empty: no items)."""
    signal = signal_of(payload)
    if routing_key in ("service", "resource"):
        key_of = _service_key if routing_key == "service" else _resource_key
        return _split_resources(payload, signal, lambda r: route(key_of(r)))
    if routing_key == "streamID":
        return _split_streams(payload, route)
    if signal is Signal.TRACES and routing_key == "traceID":
        return _split_spans(payload, route)
    item_key = _metric_key if routing_key == "metric" else _trace_key(signal)
    return _split_items(payload, signal, item_key, route)


# Keys ------------------------------------------------------------------------------------
def _trace_key(signal: Signal) -> Callable[[Any], bytes]:
    if signal is Signal.TRACES:
        return _span_trace_id
    fallback = os.urandom(16)  # this request's records without a trace ID

    def record_key(record: Any) -> bytes:
        return record.trace_id or fallback

    return record_key


def _span_trace_id(span: Any) -> bytes:
    return span.trace_id  # type: ignore[no-any-return]


def _metric_key(metric: Any) -> bytes:
    return metric.name.encode()  # type: ignore[no-any-return]


def _service_key(resource: Any) -> bytes:
    for attribute in resource.resource.attributes:
        if attribute.key == "service.name":
            return attribute.value.SerializeToString()  # type: ignore[no-any-return]
    return b""


def _resource_key(resource: Any) -> bytes:
    return _attributes_key(resource.resource.attributes)


def _attributes_key(attributes: Iterable[Any]) -> bytes:
    """The same for the same attributes in any order."""
    ordered = sorted(attributes, key=lambda kv: kv.key)
    return b"".join(kv.SerializeToString(deterministic=True) for kv in ordered)


# Splitting -------------------------------------------------------------------------------
def _split_resources(
    payload: Payload, signal: Signal, route_resource: Callable[[Any], int]
) -> dict[int, Payload]:
    """Whole resources (with every scope and item) go to one backend each."""
    resources = getattr(payload, LAYOUT[signal][0])
    owners = [route_resource(resource) for resource in resources]
    if len(set(owners)) <= 1:
        return {owners[0]: payload} if owners else {}
    parts: dict[int, Payload] = {}
    for resource, owner in zip(resources, owners, strict=True):
        part = parts.get(owner)
        if part is None:
            part = parts[owner] = signal.new_request()
        getattr(part, LAYOUT[signal][0]).append(resource)
    return parts


def _split_items(
    payload: Payload, signal: Signal, key_of: Callable[[Any], bytes], route: Route
) -> dict[int, Payload]:
    resources_field, scopes_field, items_field = LAYOUT[signal]
    plan: list[tuple[Any, Any, Any, list[int]]] = []
    seen: set[int] = set()
    for resource in getattr(payload, resources_field):
        for scope in getattr(resource, scopes_field):
            items = getattr(scope, items_field)
            owners = [route(key_of(item)) for item in items]
            seen.update(owners)
            plan.append((resource, scope, items, owners))
    if len(seen) <= 1:
        return {seen.pop(): payload} if seen else {}
    builder = _Builder(signal)
    for resource, scope, items, owners in plan:
        grouped: dict[int, list[Any]] = {}
        for item, owner in zip(items, owners, strict=True):
            grouped.setdefault(owner, []).append(item)
        for owner, chosen in grouped.items():
            getattr(builder.scope(owner, resource, scope), items_field).extend(chosen)
    return builder.parts


def _split_spans(payload: Any, route: Route) -> dict[int, Payload]:
    """Spans by trace ID, on their wire bytes: each scope is serialised once (in C), its
    spans and their trace IDs found in the bytes (:mod:`pdata.wire`), and each backend's
    scope parsed from its spans' bytes. Copying span messages one by one costs more, and
    so does reading each span's trace ID from its message."""
    plan: list[tuple[Any, bytes, list[int], list[int], list[int]]] = []
    seen: set[int] = set()
    for resource in payload.resource_spans:
        for scope in resource.scope_spans:
            data = scope.SerializeToString()
            starts, ends, ids = scope_spans_layout(data)
            spans = scope.spans
            owners = [
                route(trace_id if trace_id is not None else spans[k].trace_id)
                for k, trace_id in enumerate(ids)
            ]
            seen.update(owners)
            plan.append((resource, data, span_field_starts(starts, ends), ends, owners))
    if len(seen) <= 1:
        return {seen.pop(): payload} if seen else {}
    parts: dict[int, Payload] = {}
    resources: dict[tuple[int, int], Any] = {}
    for resource, data, starts, ends, owners in plan:
        # Serialisation writes fields in number order: scope (1), spans (2), schema URL (3).
        head, tail = (data[: starts[0]], data[ends[-1] :]) if starts else (data, b"")
        chosen: dict[int, list[bytes]] = {}
        for start, end, owner in zip(starts, ends, owners, strict=True):
            chosen.setdefault(owner, [head]).append(data[start:end])
        for owner, chunks in chosen.items():
            copy = resources.get((owner, id(resource)))
            if copy is None:
                part = parts.get(owner) or parts.setdefault(owner, Signal.TRACES.new_request())
                copy = part.resource_spans.add()
                copy.CopyFrom(shell(resource, "scope_spans"))
                resources[(owner, id(resource))] = copy
            chunks.append(tail)
            copy.scope_spans.add().MergeFromString(b"".join(chunks))
    return parts


def _split_streams(payload: Payload, route: Route) -> dict[int, Payload]:
    """Each data point by its stream: resource, scope, metric name, point attributes."""
    plan: list[tuple[Any, Any, Any, str, list[tuple[Any, int]]]] = []
    seen: set[int] = set()
    for resource in payload.resource_metrics:
        resource_key = _resource_key(resource)
        for scope in resource.scope_metrics:
            scope_key = f"{scope.scope.name}\0{scope.scope.version}".encode()
            for metric in scope.metrics:
                kind = metric.WhichOneof("data")
                if kind is None:
                    continue
                prefix = b"\0".join((resource_key, scope_key, metric.name.encode(), b""))
                points = [
                    (point, route(prefix + _attributes_key(point.attributes)))
                    for point in getattr(metric, kind).data_points
                ]
                seen.update(owner for _, owner in points)
                plan.append((resource, scope, metric, kind, points))
    if len(seen) <= 1:
        return {seen.pop(): payload} if seen else {}
    builder = _Builder(Signal.METRICS)
    for resource, scope, metric, kind, points in plan:
        grouped: dict[int, list[Any]] = {}
        for point, owner in points:
            grouped.setdefault(owner, []).append(point)
        for owner, chosen in grouped.items():
            copy = shell(metric, kind)
            data = getattr(copy, kind)
            data.CopyFrom(shell(getattr(metric, kind), "data_points"))
            data.data_points.extend(chosen)
            builder.scope(owner, resource, scope).metrics.append(copy)
    return builder.parts


class _Builder:
    """One request per backend, with one copy of each resource and scope it needs."""

    def __init__(self, signal: Signal) -> None:
        self.signal = signal
        self.parts: dict[int, Payload] = {}
        self._scopes: dict[tuple[int, int], Any] = {}
        self._resources: dict[tuple[int, int], Any] = {}

    def scope(self, owner: int, resource: Any, scope: Any) -> Any:
        """The copy of ``scope`` (under its ``resource``) in ``owner``'s request."""
        found = self._scopes.get((owner, id(scope)))
        if found is not None:
            return found
        resources_field, scopes_field, items_field = LAYOUT[self.signal]
        copy_resource = self._resources.get((owner, id(resource)))
        if copy_resource is None:
            part = self.parts.get(owner)
            if part is None:
                part = self.parts[owner] = self.signal.new_request()
            copy_resource = getattr(part, resources_field).add()
            copy_resource.CopyFrom(shell(resource, scopes_field))
            self._resources[(owner, id(resource))] = copy_resource
        copy_scope = getattr(copy_resource, scopes_field).add()
        copy_scope.CopyFrom(shell(scope, items_field))
        self._scopes[(owner, id(scope))] = copy_scope
        return copy_scope
