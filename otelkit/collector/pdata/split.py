"""Cutting and joining export requests by item: what batching and size limits share.

Requests are joined by appending their resource lists (no per-item work) and cut with
:func:`split_off`, which moves whole resources and scopes and copies only the resource
and scope straddling the cut (without their items), so each side keeps them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from otelkit.collector.pdata.signals import Payload, Signal, count_items, signal_of

# (resource list field, scope list field, item list field) of each request type.
LAYOUT = {
    Signal.TRACES: ("resource_spans", "scope_spans", "spans"),
    Signal.METRICS: ("resource_metrics", "scope_metrics", "metrics"),
    Signal.LOGS: ("resource_logs", "scope_logs", "log_records"),
}


def split_off(payload: Payload, n: int) -> Payload:
    """Remove the first ``n`` items (spans, points, records) of ``payload``, return them.

    Whole resources and scopes move without being rebuilt; only the resource and scope
    straddling the cut are copied (without their items) so that each side keeps them.
    """
    signal = signal_of(payload)
    resources_field, scopes_field, items_field = LAYOUT[signal]
    head = signal.new_request()
    is_metrics = signal is Signal.METRICS
    _move_front(
        getattr(payload, resources_field),
        getattr(head, resources_field),
        n,
        lambda res: _split_resource(res, scopes_field, items_field, is_metrics),
        lambda res: sum(
            _scope_items(s, items_field, is_metrics) for s in getattr(res, scopes_field)
        ),
    )
    return head


def _move_front(source: Any, target: Any, n: int, split: Any, size_of: Any) -> None:
    """Move the first ``n`` items held by the elements of ``source`` onto ``target``.

    ``size_of(element)`` counts an element's items; ``split(element)`` returns a function
    that removes its first k items and returns them as a new element.
    """
    whole = 0
    remaining = n
    for element in source:
        size = size_of(element)
        if size > remaining:
            break
        whole += 1
        remaining -= size
        if remaining == 0:
            break
    if whole:
        target.extend(source[:whole])
        del source[:whole]
    if remaining > 0 and len(source):
        target.append(split(source[0])(remaining))


def shell(message: Any, children: str) -> Any:
    """A copy of ``message`` without its ``children`` list (resource, scope, schema URL)."""
    copy = type(message)()
    for field, value in message.ListFields():
        if field.name == children:
            continue
        if field.is_repeated:
            getattr(copy, field.name).extend(value)
        elif field.message_type is not None:
            getattr(copy, field.name).CopyFrom(value)
        else:
            setattr(copy, field.name, value)
    return copy


def _split_resource(resource: Any, scopes_field: str, items_field: str, is_metrics: bool) -> Any:
    def take(k: int) -> Any:
        head = shell(resource, scopes_field)
        _move_front(
            getattr(resource, scopes_field),
            getattr(head, scopes_field),
            k,
            lambda scope: _split_scope(scope, items_field, is_metrics),
            lambda scope: _scope_items(scope, items_field, is_metrics),
        )
        return head

    return take


def _split_scope(scope: Any, items_field: str, is_metrics: bool) -> Any:
    def take(k: int) -> Any:
        head = shell(scope, items_field)
        if is_metrics:
            _move_front(
                getattr(scope, items_field), getattr(head, items_field), k, _split_metric,
                _metric_points,
            )  # fmt: skip
        else:
            items = getattr(scope, items_field)
            getattr(head, items_field).extend(items[:k])
            del items[:k]
        return head

    return take


def _scope_items(scope: Any, items_field: str, is_metrics: bool) -> int:
    items = getattr(scope, items_field)
    if is_metrics:
        return sum(_metric_points(m) for m in items)
    return len(items)


def _metric_points(metric: Any) -> int:
    kind = metric.WhichOneof("data")
    return len(getattr(metric, kind).data_points) if kind else 0


def _split_metric(metric: Any) -> Any:
    def take(k: int) -> Any:
        kind = metric.WhichOneof("data")
        head = shell(metric, kind)
        data = getattr(metric, kind)
        head_data = getattr(head, kind)
        head_data.CopyFrom(shell(data, "data_points"))
        head_data.data_points.extend(data.data_points[:k])
        del data.data_points[:k]
        return head

    return take


def append(target: Payload, source: Payload) -> None:
    """Move every item of ``source`` onto the end of ``target`` (same signal)."""
    resources = LAYOUT[signal_of(target)][0]
    getattr(target, resources).extend(getattr(source, resources))


def split_in_pieces(payload: Payload, items: int, max_items: int) -> list[tuple[Payload, int]]:
    """``payload`` cut into pieces of at most ``max_items`` items (the last keeps the rest).

    ``payload`` itself becomes the last piece; ``items`` is its item count.
    """
    pieces: list[tuple[Payload, int]] = []
    while max_items and items > max_items:
        pieces.append((split_off(payload, max_items), max_items))
        items -= max_items
    pieces.append((payload, items))
    return pieces


def pieces_within(
    payload: Payload, encode: Callable[[Payload], bytes], limit: int
) -> list[tuple[Payload, bytes]]:
    """``payload`` cut into pieces whose encoding fits in ``limit`` bytes, in order, each
    with its encoding. ``payload`` itself becomes the last piece. A single item that does
    not fit alone is a piece of its own, over the limit: the caller decides what to do.
    """
    data = encode(payload)
    items = count_items(payload)
    if len(data) <= limit or items <= 1:
        return [(payload, data)]
    # Cut into pieces of about equal size a little under the limit, then check each.
    count = min(items, -(-len(data) * 11 // (limit * 10)))
    per_piece = -(-items // count)
    pieces: list[tuple[Payload, bytes]] = []
    cut = split_in_pieces(payload, items, per_piece)
    try:
        for piece, _ in cut:
            pieces.extend(pieces_within(piece, encode, limit))
    except BaseException:  # an item that cannot be encoded: give the caller its batch back
        for piece, _ in cut:
            if piece is not payload:
                append(payload, piece)
        raise
    return pieces
