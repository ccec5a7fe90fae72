"""Shared pytest configuration."""

from __future__ import annotations

import logging

logging.getLogger("otelkit").setLevel(logging.INFO)
