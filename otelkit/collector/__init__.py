"""The otelkit collector: OTLP in, Python processors, exporter plugins out.

Layout mirrors the upstream OpenTelemetry Collector: ``receivers``, ``processors``,
``connectors``, ``exporters`` and ``extensions`` hold one component each; ``runtime``
loads configuration, builds the pipeline graph and runs it; ``pdata`` holds the
helpers for the OTLP protobuf messages that move through pipelines.
"""
