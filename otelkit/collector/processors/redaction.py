"""``redaction``: secrets and unwanted attributes removed before data reaches any exporter.

The keys are the upstream contrib ``redaction`` processor's (``allow_all_keys``,
``allowed_keys``, ``ignored_keys``, ``blocked_key_patterns``, ``blocked_values``,
``allowed_values``, ``hash_function``, ``summary``; mask ``****``), on top of the rules
the Sentry exporter applies (:mod:`otelkit.collector.runtime.scrub`): denylisted keys,
bearer/basic/digest/AWS credentials, ``Authorization`` lines, card numbers, IBANs, JWTs,
passwords in URLs and SQL literals. ``default_rules: false`` leaves only what the config
lists. Two differences from upstream, both so that ``redaction: {}`` is useful and safe:
``allow_all_keys`` defaults to true unless ``allowed_keys`` is given (upstream removes
every attribute of ``redaction: {}``), and span names and log bodies are scrubbed too.

The work (every attribute of every item) runs on the processor's own thread, in batch
order; more than :data:`MAX_PENDING_BATCHES` waiting batches are refused (retryable). A
small batch (the log records a connector makes from one traces batch: at most
:data:`SMALL_BATCH_ITEMS` items and :data:`SMALL_BATCH_BYTES` bytes) is redacted on the
event loop when the thread has nothing to do: the hop to the thread would cost more.
"""

from __future__ import annotations

import hashlib
import re
from typing import Literal

from pydantic import Field, field_validator

from otelkit.collector.pdata.redact import Redacted, RedactionRules, Redactor
from otelkit.collector.pdata.signals import Payload, Signal, count_items, signal_of
from otelkit.collector.runtime.component import (
    ComponentConfig,
    Consumer,
    CreateSettings,
    Processor,
    processor_factory,
)
from otelkit.collector.runtime.errors import RetryableError
from otelkit.collector.runtime.scrub import MASK, Masker, Scrubber, check_patterns
from otelkit.collector.runtime.worker import WorkerThread

MAX_PENDING_BATCHES = 64
# Batches of at most this many items and bytes are redacted on the event loop when the
# thread is idle (a few hundred microseconds at most: less than the hop to the thread and
# back); the bytes bound keeps large values, hostile or not, off the event loop.
SMALL_BATCH_ITEMS = 128
SMALL_BATCH_BYTES = 64 * 1024
_HASHES = {"md5": hashlib.md5, "sha1": hashlib.sha1, "sha3": hashlib.sha3_256}


class RedactionConfig(ComponentConfig):
    allow_all_keys: bool | None = Field(
        None,
        description="Keep attributes whatever their key. Default: true unless allowed_keys "
        "is given (then only those keys and ignored_keys are kept).",
    )
    allowed_keys: list[str] = Field(
        default_factory=list, description="With allow_all_keys false: the keys kept."
    )
    ignored_keys: list[str] = Field(
        default_factory=list, description="Keys passed through untouched (never masked)."
    )
    blocked_key_patterns: list[str] = Field(
        default_factory=list,
        description="Regular expressions over keys: matching keys have their value masked.",
    )
    blocked_values: list[str] = Field(
        default_factory=list,
        description="Regular expressions over values: matching parts are masked.",
    )
    allowed_values: list[str] = Field(
        default_factory=list,
        description="Regular expressions over values: a matching value is left alone.",
    )
    hash_function: Literal["md5", "sha1", "sha3"] | None = Field(
        None, description="Mask with this hash of the masked text instead of ****."
    )
    summary: Literal["debug", "info", "silent"] = Field(
        "silent",
        description="Attributes saying what was redacted: info counts, debug also keys.",
    )
    default_rules: bool = Field(
        True,
        description="Also apply otelkit's built-in rules (denylisted keys, credentials, "
        "card numbers, passwords in URLs and SQL).",
    )

    _check_patterns = field_validator("blocked_key_patterns", "blocked_values", "allowed_values")(
        check_patterns
    )

    def rules(self) -> RedactionRules:
        keep_all = self.allow_all_keys if self.allow_all_keys is not None else not self.allowed_keys
        return RedactionRules(
            allowed_keys=None if keep_all else frozenset(self.allowed_keys),
            ignored_keys=frozenset(self.ignored_keys),
            allowed_values=tuple(re.compile(p) for p in self.allowed_values),
            summary=self.summary,
        )

    def scrubber(self) -> Scrubber:
        return Scrubber(
            extra_patterns=self.blocked_values,
            key_patterns=self.blocked_key_patterns,
            default_rules=self.default_rules,
            mask=_masker(self.hash_function),
        )


def _masker(hash_function: str | None) -> str | Masker:
    if hash_function is None:
        return MASK
    digest = _HASHES[hash_function]

    def hashed(text: str) -> str:
        return digest(text.encode("utf-8", "surrogatepass")).hexdigest()

    return hashed


class RedactionProcessor(Processor):
    def __init__(
        self, settings: CreateSettings, config: RedactionConfig, signal: Signal, next_: Consumer
    ) -> None:
        self._next = next_
        self._name = str(settings.id)
        self._signal = signal
        self._telemetry = settings.telemetry
        self._redactor = Redactor(config.scrubber(), config.rules())
        self._worker = WorkerThread(f"processor-{self._name}", MAX_PENDING_BATCHES)
        counter = settings.telemetry.counter
        self._masked = counter(
            "otelkit_processor_redaction_masked_values",
            "Attribute values, log bodies and span names masked by the redaction processor",
            ("processor",),
        ).labels(self._name)
        self._removed = counter(
            "otelkit_processor_redaction_removed_attributes",
            "Attributes removed by the redaction processor (not in allowed_keys)",
            ("processor",),
        ).labels(self._name)

    async def consume(self, payload: Payload) -> None:
        try:
            done = await self._redact(payload)
        except RetryableError:
            self._telemetry.processor_refused(self._name, signal_of(payload), count_items(payload))
            raise
        if done.masked:
            self._masked.inc(done.masked)
        if done.removed:
            self._removed.inc(done.removed)
        await self._next.consume(payload)

    async def _redact(self, payload: Payload) -> Redacted:
        """On the worker thread, or here if the batch is small (see the module). With the
        prefilter on, a small batch's items are serialised here to learn its size (the
        prefilter needs them serialised anyway): measuring it apart cost as much again."""
        redactor, submit = self._redactor, self._worker.submit
        if count_items(payload) > SMALL_BATCH_ITEMS:
            return await submit(redactor.redact, payload)
        if redactor.prefilter is None:
            small = payload.ByteSize() <= SMALL_BATCH_BYTES
            return await submit(redactor.redact, payload, small=small)
        serialized = redactor.serialize(payload)
        small = serialized.size <= SMALL_BATCH_BYTES
        return await submit(redactor.redact_serialized, serialized, small=small)

    async def shutdown(self) -> None:
        self._worker.close()


def _create(
    settings: CreateSettings, config: RedactionConfig, signal: Signal, next_consumer: Consumer
) -> RedactionProcessor:
    return RedactionProcessor(settings, config, signal, next_consumer)


factory = processor_factory("redaction", RedactionConfig, _create, frozenset(Signal))
