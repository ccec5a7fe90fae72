"""Replaces secrets by ``[Filtered]`` before anything leaves the collector.

Keys: sentry-sdk's default denylist (exact, case- and ``-``/``_``-insensitive) plus
Relay's substring rule (``password``, ``secret``, ``token`` ...), applied to each dotted
part of an attribute key and to header names. Only string values are filtered by key:
``gen_ai.usage.input_tokens`` is a count, not a secret. Values: bearer/basic
credentials, credit card numbers (Luhn-checked), IBANs (checksum-checked), passwords in
URLs and PEM private keys are filtered wherever they appear, plus configured patterns.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

FILTERED = "[Filtered]"

# sentry_sdk.scrubber.DEFAULT_DENYLIST, normalised.
DEFAULT_DENYLIST = frozenset(
    key.lower().replace("-", "_")
    for key in (
        "password", "passwd", "secret", "api_key", "apikey", "auth", "credentials",
        "mysql_pwd", "privatekey", "private_key", "token", "session", "csrftoken",
        "sessionid", "x_csrftoken", "x_forwarded_for", "set_cookie", "cookie",
        "authorization", "proxy-authorization", "x_api_key", "connect.sid", "csrf_token",
        "csrf", "_csrf", "_csrf_token", "PHPSESSID", "_session", "user_session", "_xsrf",
        "XSRF-TOKEN", "x-sentry-auth", "sentry_key",
    )
)  # fmt: skip
_KEY_SUBSTRINGS = re.compile(
    r"password|secret|passwd|api_key|apikey|auth|credentials|mysql_pwd|privatekey|"
    r"private_key|token|otp|two[-_]factor"
)
# Keys whose names contain a sensitive word but whose values are known to be harmless.
_SAFE_KEYS = frozenset({"http.request.header.author", "otelkit.budget.exceeded"})

_VALUE_PATTERNS = (
    r"(?i:\b(?:bearer|basic|token|apikey|api-key)\s+[A-Za-z0-9\-._~+/]{8,}=*)",
    r"-----BEGIN[A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END[A-Z ]*PRIVATE KEY-----|$)",
    r"(?<=://)[^/\s:@]*:[^/\s@]*(?=@)",
    r"(?i:(?<=password=\")|(?<=password=')|(?<=secret=\")|(?<=secret=')|(?<=token=\")|(?<=token='))[^\"']+",
    r"(?i:(?<=password=)|(?<=passwd=)|(?<=pwd=)|(?<=secret=)|(?<=token=)|(?<=api_key=)|(?<=apikey=))[^\s&,;\"']+",
    r"(?<![\w-])(?:\d[ -]?){12,18}\d(?![\w-])",
    r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b",
)
_URL_KEYS = frozenset({"url.full", "http.url", "http.target", "url.original"})
_QUERY_KEYS = frozenset({"url.query"})
_CARD = re.compile(r"^(?:\d[ -]?){12,18}\d$")
_IBAN = re.compile(r"^[A-Z]{2}\d{2}[A-Z0-9 ]+$")
_SCAN, _FILTER, _URL, _QUERY = range(4)  # what to do with a string, decided per key
_PLAIN = (int, float, bool, type(None))
# Cheap tests before the regular expressions run: most values contain none of these.
# Substring tests on the lowered text are several times faster than one regex scan.
_HINT_WORDS = ("bearer", "basic ", "token", "key", "password", "passwd", "pwd=", "secret")
_DIGITS = re.compile(r"\d{4}")


def _may_hold_secret(text: str) -> bool:
    low = text.lower()
    for word in _HINT_WORDS:
        if word in low:
            return True
    return ("@" in text and "://" in text) or _DIGITS.search(text) is not None


def _luhn_ok(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _iban_ok(text: str) -> bool:
    compact = text.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(c, 36)) for c in rearranged)
    return int(number) % 97 == 1


class Scrubber:
    """Filters keys and values; one instance per exporter, reused for every item."""

    def __init__(self, extra_keys: Iterable[str] = (), extra_patterns: Iterable[str] = ()):
        self._denylist = DEFAULT_DENYLIST | {_norm(k) for k in extra_keys}
        self._value = re.compile("|".join(f"(?:{p})" for p in (*_VALUE_PATTERNS, *extra_patterns)))
        self._has_extra = bool(list(extra_patterns))
        self._actions: dict[str, int] = {}

    def _action(self, key: str) -> int:
        """What to do with a string under ``key``; decided once per key."""
        action = self._actions.get(key)
        if action is None:
            if key in _URL_KEYS:
                action = _URL
            elif key in _QUERY_KEYS:
                action = _QUERY
            else:
                action = _FILTER if self._judge_key(key) else _SCAN
            if len(self._actions) < 10_000:
                self._actions[key] = action
        return action

    def sensitive_key(self, key: str) -> bool:
        return self._action(key) == _FILTER

    def _judge_key(self, key: str) -> bool:
        if key in _SAFE_KEYS:
            return False
        norm = _norm(key)
        if norm in self._denylist:
            return True
        parts = norm.split(".")
        tail = norm.split(".header.", 1)[-1]
        return tail in self._denylist or any(
            part in self._denylist or _KEY_SUBSTRINGS.search(part) for part in parts
        )

    def value(self, text: str) -> str:
        """The text with every secret-looking part replaced."""
        if len(text) < 8 or (not self._has_extra and not _may_hold_secret(text)):
            return text
        return self._value.sub(_replace, text)

    def pair(self, key: str, value: Any) -> Any:
        """A key/value attribute as it may leave: filtered by key (strings), then by value."""
        if isinstance(value, str):
            action = self._action(key)
            if action == _SCAN:
                return self.value(value)
            if action == _FILTER:
                return FILTERED
            return self.url(value) if action == _URL else self.query(value)
        if isinstance(value, list):
            if self.sensitive_key(key) and any(isinstance(v, str) for v in value):
                return [FILTERED]
            return [self.value(v) if isinstance(v, str) else v for v in value]
        return value

    def mapping(self, data: dict[str, Any]) -> dict[str, Any]:
        """Every pair of ``data`` as it may leave (the hot path: one call per span)."""
        out: dict[str, Any] = {}
        actions, value_of, pair = self._actions, self.value, self.pair
        for key, value in data.items():
            if type(value) is str and actions.get(key) == _SCAN:
                out[key] = value_of(value)
            elif type(value) in _PLAIN:
                out[key] = value
            else:
                out[key] = pair(key, value)
        return out

    def url(self, url: str) -> str:
        """A URL without credentials and without the values of sensitive query keys."""
        if "@" not in url and "?" not in url:
            return self.value(url)
        try:
            parts = urlsplit(url)
        except ValueError:
            return self.value(url)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = f"{FILTERED}@{netloc.rsplit('@', 1)[1]}"
        query = self.query(parts.query)
        return self.value(urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)))

    def query(self, query: str) -> str:
        if not query:
            return query
        pairs = parse_qsl(query, keep_blank_values=True)
        cleaned = [(k, FILTERED if self.sensitive_key(k) else self.value(v)) for k, v in pairs]
        if cleaned == pairs:
            return query
        return urlencode(cleaned, safe="[]")


def _replace(match: re.Match[str]) -> str:
    text = match.group(0)
    if _CARD.match(text):
        digits = re.sub(r"\D", "", text)
        return FILTERED if _luhn_ok(digits) else text
    if _IBAN.match(text):
        return FILTERED if _iban_ok(text) else text
    return FILTERED


def _norm(key: str) -> str:
    return key.lower().replace("-", "_")
