"""Worker processes of one collector: ``otelkit collector run --workers N``."""
