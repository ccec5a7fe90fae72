"""Envelopes to Sentry: encoding, auth, gzip, rate limits and the answer to each status.

* ``X-Sentry-Rate-Limits`` is read on every answer (200 included) and the longest limit per
  category is kept; a 429 without it limits every category for ``Retry-After`` (60 s if
  absent). A limited category is not sent until its limit passes: its envelopes are
  dropped and counted (reason ``rate_limited``), as the Sentry SDKs do; Sentry would
  refuse them anyway and asking again only burns quota.
* 413 and other 4xx are permanent for that envelope (reasons ``too_large`` and
  ``rejected``): dropped, counted, logged once per status with Sentry's reason.
* 5xx and network errors are retryable: the shared exporter helper retries the same
  envelope with backoff (honouring ``Retry-After``). An accepted envelope is never sent
  again.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from otelkit import __version__
from otelkit.collector.exporters.sentry.common import SDK_INFO
from otelkit.collector.runtime.errors import PermanentError, RetryableError

log = logging.getLogger("otelkit.exporter.sentry")

DEFAULT_RETRY_AFTER = 60.0
MAX_ITEM_BYTES = 1_000_000  # Sentry's per event / transaction limit (decompressed)
USER_AGENT = f"otelkit.collector/{__version__}"
_INLINE_GZIP_BYTES = 32 * 1024  # larger bodies are compressed on a thread, off the event loop
ITEM_CATEGORY = {"event": "error", "transaction": "transaction", "log": "log_item"}

_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode

try:  # orjson, when installed, encodes several times faster; output is equivalent JSON
    import orjson

    def dumps(value: Any) -> bytes:
        try:
            return orjson.dumps(value, default=str)
        except (TypeError, orjson.JSONEncodeError):  # e.g. an int beyond 64 bits
            return _json(value).encode("utf-8", "surrogatepass")

except ImportError:  # pragma: no cover - depends on the environment

    def dumps(value: Any) -> bytes:
        return _json(value).encode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class Envelope:
    """One envelope waiting to go: items already encoded, header finished at send time.

    ``sent_at`` is stamped when the request is made, so Sentry's clock-drift correction
    sees the real send time even after queueing and retries.
    """

    category: str
    body: bytes  # item headers and payloads
    header: Mapping[str, Any]
    size: int

    def encode(self, sent_at: str) -> bytes:
        return dumps({**self.header, "sent_at": sent_at}) + b"\n" + self.body


def event_envelope(
    event: Mapping[str, Any], item_type: str, dsc: Mapping[str, str] | None = None
) -> Envelope:
    """An envelope with one event or transaction item."""
    payload = dumps(event)
    header: dict[str, Any] = {"event_id": event["event_id"], "sdk": _SDK_HEADER}
    if dsc:
        header["trace"] = dict(dsc)
    item_header = dumps(
        {"type": item_type, "length": len(payload), "content_type": "application/json"}
    )
    return Envelope(
        ITEM_CATEGORY[item_type], item_header + b"\n" + payload + b"\n", header, len(payload)
    )


def log_envelope(items: Sequence[Mapping[str, Any]]) -> Envelope:
    payload = dumps({"items": items})
    item_header = dumps(
        {
            "type": "log",
            "length": len(payload),
            "item_count": len(items),
            "content_type": "application/vnd.sentry.items.log+json",
        }
    )
    header = {"sdk": _SDK_HEADER}
    return Envelope("log_item", item_header + b"\n" + payload + b"\n", header, len(payload))


_SDK_HEADER = {"name": SDK_INFO["name"], "version": SDK_INFO["version"]}


class RateLimits:
    """The categories Sentry asked us to hold back, until when (monotonic seconds)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._until: dict[str, float] = {}
        self._clock = clock

    def limited(self, category: str) -> float:
        """Seconds left on the limit for ``category`` (0 when it may be sent)."""
        now = self._clock()
        until = max(self._until.get(category, 0.0), self._until.get("", 0.0))
        return max(0.0, until - now)

    def update(self, status: int, headers: Mapping[str, str]) -> bool:
        """Take the limits from an answer; True when it set any."""
        now = self._clock()
        header = headers.get("x-sentry-rate-limits")
        if header:
            found = False
            for entry in header.split(","):
                parts = entry.strip().split(":")
                if len(parts) < 2:
                    continue
                try:
                    seconds = float(parts[0])
                except ValueError:
                    continue
                for category in parts[1].split(";") if parts[1] else [""]:
                    self._extend(category.strip(), now + seconds)
                    found = True
            return found
        if status == 429:
            self._extend("", now + _retry_after(headers, DEFAULT_RETRY_AFTER))
            return True
        return False

    def _extend(self, category: str, until: float) -> None:
        if until > self._until.get(category, 0.0):
            self._until[category] = until


def _retry_after(headers: Mapping[str, str], default: float) -> float:
    value = headers.get("retry-after")
    if value is None:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        return default


class DroppedError(PermanentError):
    """An envelope that cannot be delivered; ``reason`` labels the send_failed counter."""

    logged = True

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class SentryTransport:
    """POSTs envelopes to one project's envelope endpoint."""

    def __init__(
        self,
        url: str,
        auth_header: str,
        *,
        timeout: float,
        compress: bool = True,
        rate_limits: RateLimits | None = None,
        extra_headers: Mapping[str, str] | None = None,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.url = url
        self.compress = compress
        self.rate_limits = rate_limits or RateLimits()
        self._headers = {
            "X-Sentry-Auth": auth_header,
            "User-Agent": USER_AGENT,
            **(extra_headers or {}),
        }
        self._client = httpx.AsyncClient(timeout=timeout or None, **(client_options or {}))
        self._logged: set[str] = set()
        self.limit_logged_until = 0.0

    async def close(self) -> None:
        await self._client.aclose()

    async def send(self, envelope: Envelope) -> None:
        wait = self.rate_limits.limited(envelope.category)
        if wait:
            raise DroppedError(
                f"{envelope.category} is rate limited for {wait:.0f}s", "rate_limited"
            )
        sent_at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        body = envelope.encode(sent_at)
        await self.post(body, "application/x-sentry-envelope", envelope.category)

    async def post(
        self, body: bytes, content_type: str, category: str, url: str | None = None
    ) -> None:
        headers = {**self._headers, "Content-Type": content_type}
        if self.compress:
            body = await _gzip(body)
            headers["Content-Encoding"] = "gzip"
        try:
            response = await self._client.post(url or self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise RetryableError(f"cannot reach Sentry at {self.url}: {exc!r}") from exc
        self._answer(response, category)

    def _answer(self, response: httpx.Response, category: str) -> None:
        status = response.status_code
        limited = self.rate_limits.update(status, response.headers)
        if 200 <= status < 300:
            return
        reason = _reason(response)
        if status == 429 or (limited and self.rate_limits.limited(category)):
            self._log_limit(category)
            raise DroppedError(f"Sentry rate limited {category} (429): {reason}", "rate_limited")
        if status == 413:
            self._log_once("413", f"Sentry refused an envelope as too large (413): {reason}")
            raise DroppedError(f"too large (413): {reason}", "too_large")
        if 400 <= status < 500:
            self._log_once(str(status), f"Sentry refused an envelope ({status}): {reason}")
            raise DroppedError(f"refused ({status}): {reason}", "rejected")
        raise RetryableError(
            f"Sentry answered {status}: {reason}",
            retry_after=_retry_after(response.headers, 0.0) or None,
        )

    def _log_once(self, key: str, message: str) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.error("%s (further ones are counted, not logged)", message)

    def _log_limit(self, category: str) -> None:
        wait = self.rate_limits.limited(category)
        now = time.monotonic()
        if now >= self.limit_logged_until:
            self.limit_logged_until = now + max(wait, 1.0)
            log.warning(
                "Sentry rate limit: %s held back for %.0fs; envelopes meanwhile are dropped and counted",
                category or "all categories",
                wait,
            )


async def _gzip(body: bytes) -> bytes:
    if len(body) <= _INLINE_GZIP_BYTES:
        return gzip.compress(body, compresslevel=6)
    return await asyncio.to_thread(gzip.compress, body, 6)


def _reason(response: httpx.Response) -> str:
    reason: str | None = response.headers.get("x-sentry-error")
    if reason:
        return reason
    text = response.text.strip()
    return text[:200] if text else str(response.reason_phrase)
