"""The Prometheus remote-write 1.0 messages (``prometheus.WriteRequest`` and parts).

Built at import time from a descriptor in a private pool, with the field numbers of
``prometheus/prompb/{remote,types}.proto``: no generated code to vendor, no codegen
step, and no clash with any other package that registers the same names. Native
histograms are not sent, so their messages are left out.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto

# (message, [(field, number, type, label, message type)])
_MESSAGES: list[tuple[str, list[tuple[str, int, int, int, str]]]] = [
    ("Label", [
        ("name", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ("value", 2, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
    ]),
    ("Sample", [
        ("value", 1, _F.TYPE_DOUBLE, _F.LABEL_OPTIONAL, ""),
        ("timestamp", 2, _F.TYPE_INT64, _F.LABEL_OPTIONAL, ""),
    ]),
    ("Exemplar", [
        ("labels", 1, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".prometheus.Label"),
        ("value", 2, _F.TYPE_DOUBLE, _F.LABEL_OPTIONAL, ""),
        ("timestamp", 3, _F.TYPE_INT64, _F.LABEL_OPTIONAL, ""),
    ]),
    ("TimeSeries", [
        ("labels", 1, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".prometheus.Label"),
        ("samples", 2, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".prometheus.Sample"),
        ("exemplars", 3, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".prometheus.Exemplar"),
    ]),
    ("MetricMetadata", [
        ("type", 1, _F.TYPE_ENUM, _F.LABEL_OPTIONAL, ".prometheus.MetricMetadata.MetricType"),
        ("metric_family_name", 2, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ("help", 4, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ("unit", 5, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
    ]),
    ("WriteRequest", [
        ("timeseries", 1, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".prometheus.TimeSeries"),
        ("metadata", 3, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".prometheus.MetricMetadata"),
    ]),
]  # fmt: skip
METRIC_TYPES = {"unknown": 0, "counter": 1, "gauge": 2, "histogram": 3, "gaugehistogram": 4,
                "summary": 5, "info": 6, "stateset": 7}  # fmt: skip


def _build() -> dict[str, Any]:
    file = descriptor_pb2.FileDescriptorProto(
        name="otelkit/prometheus_remote.proto", package="prometheus", syntax="proto3"
    )
    for message_name, fields in _MESSAGES:
        message = file.message_type.add(name=message_name)
        for name, number, type_, label, type_name in fields:
            field = message.field.add(name=name, number=number, type=type_, label=label)
            if type_name:
                field.type_name = type_name
        if message_name == "MetricMetadata":
            enum = message.enum_type.add(name="MetricType")
            for name, number in METRIC_TYPES.items():
                enum.value.add(name=name.upper(), number=number)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"prometheus.{name}"))
        for name, _ in _MESSAGES
    }


_CLASSES = _build()
Label: Any = _CLASSES["Label"]
Sample: Any = _CLASSES["Sample"]
Exemplar: Any = _CLASSES["Exemplar"]
TimeSeries: Any = _CLASSES["TimeSeries"]
MetricMetadata: Any = _CLASSES["MetricMetadata"]
WriteRequest: Any = _CLASSES["WriteRequest"]
