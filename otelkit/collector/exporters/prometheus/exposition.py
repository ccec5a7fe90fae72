"""Render a store snapshot as Prometheus text 0.0.4 or OpenMetrics 1.0.

Text 0.0.4 is the default; OpenMetrics is served when the scraper asks for it and is
the only format that carries exemplars (trace and span IDs on counters and buckets).

OpenMetrics takes a histogram's and a summary's sum, and a summary's quantile values,
as counters: never NaN or negative, and no sum (so no count) beside a negative bucket
bound. Where a point has them anyway (OpenTelemetry allows negative measurements), its
OpenMetrics exposition leaves those samples out, as that specification says, instead
of writing one a parser refuses with the whole scrape; the text format keeps them.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from otelkit.collector.exporters.prometheus.store import FamilySnapshot, label_text
from otelkit.collector.exporters.prometheus.translation import (
    Exemplar,
    HistogramPoint,
    NumberPoint,
    Point,
    SummaryPoint,
    go_float,
)
from otelkit.collector.pdata.values import format_float

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


Body = list[bytes]
"""An exposition as byte chunks of about ``_CHUNK_LINES`` lines: no single join or
encode of a many-megabyte string holds the GIL, and the HTTP response streams them."""
_CHUNK_LINES = 5000


def render_text(snapshot: list[FamilySnapshot], send_timestamps: bool = False) -> Body:
    out: list[str] = []
    body: Body = []
    stamp = _ms_stamp if send_timestamps else _no_stamp
    for fam in snapshot:
        name = fam.family.name
        if fam.family.help:
            out.append(f"# HELP {name} {_escape_help_text(fam.family.help)}\n")
        out.append(f"# TYPE {name} {fam.family.kind}\n")
        for labels, point in fam.series:
            _render_series(out, name, name, labels, point, stamp, None, False)
            if len(out) >= _CHUNK_LINES:
                _flush(out, body)
    _flush(out, body)
    return body


def render_openmetrics(snapshot: list[FamilySnapshot], send_timestamps: bool = False) -> Body:
    out: list[str] = []
    body: Body = []
    stamp = _s_stamp if send_timestamps else _no_stamp
    for fam in snapshot:
        family = fam.family
        base = family.name
        if family.kind == "counter" and base.endswith("_total"):
            base = base[: -len("_total")]
        out.append(f"# TYPE {base} {family.kind}\n")
        if family.unit and base.endswith("_" + family.unit):
            out.append(f"# UNIT {base} {family.unit}\n")
        if family.help:
            out.append(f"# HELP {base} {_escape_help_om(family.help)}\n")
        value_name = base + "_total" if family.kind == "counter" else base
        for labels, point in fam.series:
            _render_series(out, base, value_name, labels, point, stamp, _om_exemplar, True)
            if len(out) >= _CHUNK_LINES:
                _flush(out, body)
    out.append("# EOF\n")
    _flush(out, body)
    return body


def _flush(out: list[str], body: Body) -> None:
    if out:
        body.append("".join(out).encode())
        out.clear()


def _render_series(
    out: list[str],
    base: str,
    value_name: str,
    labels: str,
    point: Point,
    stamp: Callable[[int], str],
    exemplar: Callable[[Exemplar | None], str] | None,
    openmetrics: bool,
) -> None:
    braces = f"{{{labels}}}" if labels else ""
    ts = stamp(point.time_ns)
    if isinstance(point, NumberPoint):
        ex = exemplar(point.exemplar) if exemplar and value_name != base else ""
        out.append(f"{value_name}{braces} {format_float(point.value)}{ts}{ex}\n")
    elif isinstance(point, HistogramPoint):
        prefix = f"{base}_bucket{{{labels}," if labels else f"{base}_bucket{{"
        exemplars = point.exemplars
        running = 0
        for i, count in enumerate(point.counts):
            running += count
            le = _le(point.bounds[i]) if i < len(point.bounds) else "+Inf"
            ex = exemplar(exemplars[i]) if exemplar and exemplars else ""
            out.append(f'{prefix}le="{le}"}} {running}{ts}{ex}\n')
        if len(point.counts) <= len(point.bounds):  # no +Inf bucket given
            out.append(f'{prefix}le="+Inf"}} {point.count}{ts}\n')
        negative_bound = bool(point.bounds) and point.bounds[0] < 0
        if not openmetrics or (point.sum >= 0 and not negative_bound):
            out.append(f"{base}_sum{braces} {format_float(point.sum)}{ts}\n")
            out.append(f"{base}_count{braces} {point.count}{ts}\n")
    elif isinstance(point, SummaryPoint):
        prefix = f"{base}{{{labels}," if labels else f"{base}{{"
        for quantile, value in point.quantiles:
            if openmetrics and value < 0:
                continue
            q = go_float(quantile)
            out.append(f'{prefix}quantile="{q}"}} {format_float(value)}{ts}\n')
        if not openmetrics or point.sum >= 0:
            out.append(f"{base}_sum{braces} {format_float(point.sum)}{ts}\n")
        out.append(f"{base}_count{braces} {point.count}{ts}\n")


_LE_CACHE: dict[float, str] = {}


def _le(bound: float) -> str:
    text = _LE_CACHE.get(bound)
    if text is None:
        text = go_float(bound)
        if len(_LE_CACHE) < 10_000:
            _LE_CACHE[bound] = text
    return text


def _om_exemplar(ex: Exemplar | None) -> str:
    """An exemplar's text; labels whose values would need escaping are left out: the
    exemplar parser of prometheus_client takes an escaped quote for the end of the
    value and refuses the whole scrape, and the trace and span IDs never need one."""
    if ex is None:
        return ""
    seconds = _seconds(ex.time_ns) if ex.time_ns else ""
    labels = tuple((k, v) for k, v in ex.labels if not _NEEDS_ESCAPING.search(v))
    return f" # {{{label_text(labels)}}} {format_float(ex.value)}{seconds}"


_NEEDS_ESCAPING = re.compile(r'["\\\n]')


def _no_stamp(time_ns: int) -> str:
    return ""


def _ms_stamp(time_ns: int) -> str:
    return f" {time_ns // 1_000_000}" if time_ns else ""


def _s_stamp(time_ns: int) -> str:
    return _seconds(time_ns) if time_ns else ""


def _seconds(time_ns: int) -> str:
    return f" {time_ns // 1_000_000_000}.{time_ns % 1_000_000_000 // 1_000_000:03d}"


def _escape_help_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_help_om(text: str) -> str:
    return _escape_help_text(text).replace('"', '\\"')


def wants_openmetrics(accept: str) -> bool:
    """True when the ``Accept`` header prefers OpenMetrics over the text format."""
    best_om, best_text = 0.0, 0.0
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = media.lower()
        if media == "application/openmetrics-text":
            best_om = max(best_om, q)
        elif media in ("text/plain", "*/*", "text/*"):
            best_text = max(best_text, q)
    return best_om > 0 and best_om >= best_text
