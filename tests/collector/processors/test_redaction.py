"""The redaction processor: planted secrets in every signal, upstream's keys, and cost."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import pytest
from google.protobuf.json_format import MessageToJson
from pydantic import ValidationError

from otelkit.collector.pdata.signals import Payload, Signal, signal_of
from otelkit.collector.processors.redaction import RedactionConfig, factory
from otelkit.collector.runtime.component import ComponentID, CreateSettings, Kind
from otelkit.collector.runtime.scrub import CHUNK, MASK, Scrubber
from otelkit.collector.runtime.telemetry import SelfTelemetry
from tests.support.secrets import (
    AUTHORIZATION_VALUES,
    PLANTED,
    SAFE,
    attributes,
    leaked,
    planted_logs,
    planted_metrics,
    planted_traces,
)


class Downstream:
    def __init__(self) -> None:
        self.batches: list[Payload] = []

    async def consume(self, payload: Payload) -> None:
        self.batches.append(payload)


def redacted(payload: Payload, **config: Any) -> Payload:
    """``payload`` after one pass through a ``redaction`` processor with ``config``."""
    downstream = Downstream()
    settings = CreateSettings(ComponentID("redaction"), Kind.PROCESSOR, SelfTelemetry())
    processor = factory.create(
        settings, RedactionConfig.model_validate(config), signal_of(payload), downstream
    )

    async def scenario() -> None:
        await processor.consume(payload)
        await processor.shutdown()

    asyncio.run(scenario())
    (out,) = downstream.batches
    return out


def text_of(payload: Payload) -> str:
    return MessageToJson(payload, ensure_ascii=False) + str(payload)


def span_attributes(payload: Any, index: int = 0) -> dict[str, Any]:
    span = payload.resource_spans[0].scope_spans[0].spans[index]
    return {kv.key: kv.value for kv in span.attributes}


@pytest.mark.parametrize(
    "make", [planted_traces, planted_logs, planted_metrics], ids=["traces", "logs", "metrics"]
)
def test_no_planted_secret_survives_in_any_signal(make: Any) -> None:
    before = text_of(make())
    assert leaked(before), "the planted data should carry secrets"
    after = text_of(redacted(make()))
    assert not leaked(after)
    assert "order 7 shipped" in after and MASK in after
    if make is not planted_metrics:
        assert all(text in after for text in SAFE)


@pytest.mark.parametrize(
    "make", [planted_traces, planted_logs, planted_metrics], ids=["traces", "logs", "metrics"]
)
@pytest.mark.parametrize("size", ["small", "large values", "many items"])
def test_secrets_are_masked_on_the_event_loop_and_on_the_thread_alike(
    make: Any, size: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small batches are redacted on the event loop, others on the processor's thread;
    each with or without the prefilter (``allowed_keys`` turns it off)."""
    from otelkit.collector.processors import redaction
    from otelkit.collector.runtime.worker import WorkerThread

    inline: list[bool] = []
    submit = WorkerThread.submit

    async def noted(self: WorkerThread, work: Any, *args: Any, small: bool = False) -> Any:
        inline.append(small and not self._queued)
        return await submit(self, work, *args, small=small)

    monkeypatch.setattr(WorkerThread, "submit", noted)
    if size == "many items":
        monkeypatch.setattr(redaction, "SMALL_BATCH_ITEMS", 0)
    if size == "large values":
        monkeypatch.setattr(redaction, "SMALL_BATCH_BYTES", 100)
    keys = sorted(k.key for k in attributes(PLANTED))
    for config in ({}, {"allowed_keys": [*keys, "service.name", "event", "password"]}):
        after = text_of(redacted(make(), **config))
        assert not leaked(after) and MASK in after
    assert inline == [size == "small"] * 2


def test_authorization_values_of_every_scheme_are_masked_whole_by_key() -> None:
    """A raw token has no shape: only the key rule catches it (header or attribute)."""
    out = redacted(planted_traces())
    attrs = span_attributes(out)
    header = [v.string_value for v in attrs["http.request.header.authorization"].array_value.values]
    assert header == [MASK] * len(AUTHORIZATION_VALUES)
    proxy = attrs["http.request.header.proxy-authorization"].array_value.values
    assert [v.string_value for v in proxy] == [MASK]
    for key in ("authorization", "proxy_authorization", "upstream.request.authorization",
                "aws.authorization"):  # fmt: skip
        assert attrs[key].string_value == MASK, key


def test_sql_literals_of_sensitive_columns_are_removed_and_the_statement_kept() -> None:
    attrs = span_attributes(redacted(planted_traces()))
    assert attrs["db.statement"].string_value == f"UPDATE users SET pw='{MASK}' WHERE id = 7"
    assert attrs["db.query.text"].string_value == (
        f"INSERT INTO accounts (name, password) VALUES ('bob', '{MASK}')"
    )


def test_numbers_are_not_masked_by_the_built_in_key_rule() -> None:
    attrs = span_attributes(redacted(planted_traces()))
    assert attrs["gen_ai.usage.input_tokens"].int_value == 1234


def test_allowed_keys_fail_closed_and_ignored_keys_pass_untouched() -> None:
    out = redacted(
        planted_traces(), allowed_keys=["message", "db.statement"], ignored_keys=["db.password"]
    )
    attrs = span_attributes(out)
    assert set(attrs) == {"message", "db.statement", "db.password"}
    assert attrs["db.password"].string_value == PLANTED["db.password"]  # ignored: untouched
    assert MASK in attrs["db.statement"].string_value
    explicit = span_attributes(redacted(planted_traces(), allow_all_keys=False))
    assert explicit == {}  # upstream: allow_all_keys false with no allowed_keys keeps none


def test_blocked_key_patterns_mask_values_of_every_type() -> None:
    attrs = span_attributes(redacted(planted_traces(), blocked_key_patterns=[r"^gen_ai\."]))
    assert attrs["gen_ai.usage.input_tokens"].string_value == MASK


def test_blocked_values_mask_the_matching_part_and_allowed_values_win() -> None:
    request = planted_traces()
    span = request.resource_spans[0].scope_spans[0].spans[0]
    span.attributes.extend(
        attributes({"employee": "by EMP-123456 today", "contact": "ops@mycompany.com"})
    )
    attrs = span_attributes(
        redacted(request, blocked_values=[r"EMP-\d{6}", r"\S+@\S+"],
                 allowed_values=[r"@mycompany\.com$"])
    )  # fmt: skip
    assert attrs["employee"].string_value == f"by {MASK} today"
    assert attrs["contact"].string_value == "ops@mycompany.com"


def test_hash_function_replaces_masks_with_a_digest() -> None:
    attrs = span_attributes(redacted(planted_traces(), hash_function="sha3"))
    digest = hashlib.sha3_256(PLANTED["db.password"].encode()).hexdigest()
    assert attrs["db.password"].string_value == digest


@pytest.mark.parametrize("summary", ["info", "debug", "silent"])
def test_summary_says_what_was_redacted(summary: str) -> None:
    attrs = span_attributes(redacted(planted_traces(), allowed_keys=["db.password", "message",
                                                                      "db.statement"],
                                     summary=summary))  # fmt: skip
    if summary == "silent":
        assert not [k for k in attrs if k.startswith("redaction.")]
        return
    assert attrs["redaction.masked.count"].int_value == 2
    assert attrs["redaction.redacted.count"].int_value == len(PLANTED) + 1 - 3
    if summary == "debug":
        assert attrs["redaction.masked.keys"].string_value == "db.password,db.statement"
        assert "http.request.header.authorization" in attrs["redaction.redacted.keys"].string_value
    else:
        assert "redaction.masked.keys" not in attrs


def test_default_rules_false_keeps_only_the_configured_rules() -> None:
    attrs = span_attributes(redacted(planted_traces(), default_rules=False,
                                     blocked_values=["hunter2"]))  # fmt: skip
    assert attrs["db.password"].string_value == f"{MASK}-password"
    assert attrs["api_key"].string_value == PLANTED["api_key"]


def test_a_bad_pattern_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="not a regular expression"):
        RedactionConfig.model_validate({"blocked_values": ["(unclosed"]})


def test_log_body_maps_are_redacted_by_key_and_value() -> None:
    out = redacted(planted_logs())
    structured = out.resource_logs[0].scope_logs[0].log_records[2]
    body = {kv.key: kv.value.string_value for kv in structured.body.kvlist_value.values}
    assert body == {"event": "login", "password": MASK, "headers.authorization": MASK}


def test_secrets_across_scan_windows_of_long_text_are_found() -> None:
    """Texts longer than one scan window: secrets at, across and beyond the window edges."""
    scrubber = Scrubber(mask=MASK)
    filler = "lorem ipsum " * (CHUNK // 12)
    pem = "-----BEGIN PRIVATE KEY-----\n" + "A" * 3000 + "\n-----END PRIVATE KEY-----"
    pieces = [filler[: CHUNK - 10], "4111 1111 1111 1111", filler, pem, filler,
              "password=at-the-end-value"]  # fmt: skip
    text = " ".join(pieces)
    cleaned = scrubber.value(text)
    assert "4111 1111 1111 1111" not in cleaned
    assert "AAAAAAAAAA" not in cleaned
    assert "at-the-end-value" not in cleaned
    assert cleaned.count(MASK) == 3
    assert cleaned.replace(MASK, "") == text.replace("4111 1111 1111 1111", "").replace(
        pem, ""
    ).replace("at-the-end-value", "")


@pytest.mark.parametrize("unit", ["\n", "password=", "bearer ", "1", "@://", "'"])
def test_scrubbing_megabytes_of_hostile_text_takes_bounded_time(unit: str) -> None:
    text = unit * (4 * (1 << 20) // len(unit))
    started = time.perf_counter()
    Scrubber().value(text)
    Scrubber().sql(text)
    assert time.perf_counter() - started < 20.0  # linear: a few seconds on a loaded machine


def test_processor_is_registered_for_every_signal() -> None:
    assert factory.signals == frozenset(Signal)
