"""One scrubber for everything that leaves the collector, and for what it prints.

:class:`Scrubber` decides per attribute key, then per value:

* **Keys** (default rules): sentry-sdk's denylist (exact, case- and ``-``/``_``-
  insensitive) plus Relay's substring rule (``password``, ``secret``, ``token``,
  ``auth`` ...), applied to each dotted part of a key and to header names
  (``http.request.header.proxy-authorization``). A value under such a key is masked
  whole, whatever its scheme (``Digest ...``, ``AWS4-HMAC-SHA256 ...``, a raw token).
  Only strings are masked by these rules: ``gen_ai.usage.input_tokens`` is a count. Keys
  given as patterns by the user mask values of every type. PII keys (client addresses,
  cookies, user e-mail and name) are masked unless PII may be sent.
* **Values**, wherever they appear: credentials after an auth scheme (``Bearer``,
  ``Basic``, ``Digest``, ``AWS4-HMAC-SHA256``), ``Authorization:`` header lines,
  ``password=``/``pw='...'``/``"token": "..."`` pairs, JWTs, AWS access key IDs, credit
  card numbers (Luhn-checked), IBANs (checksum-checked), passwords in URLs and PEM private
  keys, plus configured patterns.
* **URLs** (``url.full`` ...) lose their credentials and the values of sensitive query
  keys; **SQL** (``db.query.text``, ``db.statement``) loses the literals compared with,
  assigned or inserted into sensitive columns, and those after ``PASSWORD`` /
  ``IDENTIFIED BY``.

Scanning costs time linear in the text; texts longer than :data:`CHUNK` are scanned in
overlapping windows, so no single regular-expression call holds the GIL for long.

:func:`redact_url` and :func:`redact_text` apply the same rules to the collector's own
output (logs, ``validate``, ``components``), masking with ``****``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

FILTERED = "[Filtered]"  # Sentry's mask
MASK = "****"  # the upstream redaction processor's mask, and the one for the collector's output
CHUNK = 64 * 1024  # characters scanned per regular-expression call
_OVERLAP = 1024  # a secret up to this long is found across a window's end

Masker = Callable[[str], str]  # the masked text -> its replacement

# sentry_sdk.scrubber.DEFAULT_DENYLIST, normalised, and a few more credential names.
DEFAULT_DENYLIST = frozenset(
    key.lower().replace("-", "_")
    for key in (
        "password", "passwd", "secret", "api_key", "apikey", "auth", "credentials",
        "mysql_pwd", "privatekey", "private_key", "token", "session", "csrftoken",
        "sessionid", "x_csrftoken", "x_forwarded_for", "set_cookie", "cookie",
        "authorization", "proxy-authorization", "x_api_key", "connect.sid", "csrf_token",
        "csrf", "_csrf", "_csrf_token", "PHPSESSID", "_session", "user_session", "_xsrf",
        "XSRF-TOKEN", "x-sentry-auth", "sentry_key", "pwd", "pw", "signature", "sig",
        "x-amz-signature", "x-amz-credential", "dsn",
    )
)  # fmt: skip
# Relay's rule: a key part holding one of these is sensitive (parts are normalised first).
_KEY_SUBSTRING_WORDS = ("password", "secret", "passwd", "api_key", "apikey", "auth",
                        "credentials", "mysql_pwd", "privatekey", "private_key", "token", "otp",
                        "two_factor")  # fmt: skip
_KEY_SUBSTRINGS = re.compile("|".join(_KEY_SUBSTRING_WORDS))
# Keys whose names contain a sensitive word but whose values are known to be harmless.
_SAFE_KEYS = frozenset({"http.request.header.author", "otelkit.budget.exceeded"})
#: Personal data Sentry's SDKs send only with ``send_default_pii``.
PII_KEYS = frozenset(
    {
        "client.address", "client.socket.address", "http.client_ip", "net.peer.ip",
        "net.sock.peer.addr", "user.email", "user.name", "user.full_name",
        "http.request.header.cookie", "http.response.header.set-cookie",
        "http.request.header.x-forwarded-for", "http.request.header.x-real-ip",
        "http.request.header.forwarded", "http.request.header.true-client-ip",
        "http.request.header.cf-connecting-ip",
    }
)  # fmt: skip
URL_KEYS = frozenset({"url.full", "http.url", "http.target", "url.original"})
QUERY_KEYS = frozenset({"url.query"})
SQL_KEYS = frozenset({"db.query.text", "db.statement"})

# Value rules: each a pattern and a cheap test of whether it can match at all (most values
# pass no test and cost a few substring checks). A group named ``s<n>`` marks the secret
# part of a match (the rest stays readable); without one the whole match is masked, after
# the rule's check agrees. Every repetition is bounded by a character that cannot start
# the next, so scans are linear in the text.
_AUTH_KEYS = r"password|passwd|pwd|pw|secret|token|api_?key|access_?key|client_?secret"
_KEYWORDS = ("bearer", "basic", "token", "key", "pass", "pw", "secret", "digest", "authoriz")
_QUOTED_OR_WORD = r"(?:\"(?P<{0}a>[^\"\r\n]*)\"|'(?P<{0}b>[^'\r\n]*)'|(?P<{0}c>[^\s&,;\"']+))"
_KEYWORD_PATTERNS = (
    r"(?i:\b(?:bearer|basic|token|apikey|api-key)[ \t]+[A-Za-z0-9\-._~+/]{8,}=*)",
    r"(?i:\bdigest)[ \t]+\w+=[^\r\n]*",
    # ``Authorization: <anything>`` (a header line, YAML, JSON): the rest of the value.
    r"(?i:(?<![\w-])(?:proxy-)?authorization[\"']?[ \t]*[:=][ \t]*)"
    r"(?:\"(?P<s0a>[^\"\r\n]*)\"|'(?P<s0b>[^'\r\n]*)'|(?P<s0c>[^\r\n]+))",
    # ``password=x``, ``pw='x'``, ``"token": "x"``, ``secret: x``
    rf"(?i:(?<![A-Za-z])(?:{_AUTH_KEYS})[\"']?[ \t]*[:=][ \t]*)" + _QUOTED_OR_WORD.format("s1"),
)
_KEYWORD_HINT = re.compile("|".join(_KEYWORDS))
# A card number as it is written: 13 to 19 digits in a row, or in groups (four digits,
# then groups of three to six, each after one space or dash: 4-4-4-4, 4-6-5, 4-4-4-4-3).
# Any run of digits with single separators would also take in neighbouring numbers:
# an access line's "/orders/999622830388 200 31.2ms" holds a Luhn-valid run of 17.
_CARD_PATTERN = r"(?<![\w-])(?:[0-9]{13,19}|[0-9]{4}(?:[ -][0-9]{3,6}){2,4})(?![\w-])"
_MIN_CARD, _MIN_IBAN = 13, 15  # characters: shorter text cannot hold one
# (pattern, check) in the order value() tries them; each is tried only when its cheap
# test in value() says it may match.
_BUILT_IN: tuple[tuple[str, str], ...] = (
    ("|".join(_KEYWORD_PATTERNS), ""),
    (r"\bAWS4-HMAC-SHA256[ \t]+[^\r\n]*|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", ""),
    (r"-----BEGIN[A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END[A-Z ]*PRIVATE KEY-----|$)", ""),
    (r"://(?P<s5>[^/\s:@]*:[^/\s@]*)@", ""),
    (r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*", ""),
    (_CARD_PATTERN, "card"),
    (r"[A-Z](?<!\w[A-Z])[A-Z][0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b", "iban"),
)
_SECRET_GROUPS = ("s0a", "s0b", "s0c", "s1a", "s1b", "s1c", "s5")
#: Keys whose values are names, numbers or templates the instrumentation chose, never
#: user input: they are not scanned (a configured pattern still applies).
NOT_SCANNED_KEYS = frozenset(
    {
        "http.request.method", "http.method", "http.route", "http.response.status_code",
        "http.status_code", "server.address", "server.port", "network.protocol.name",
        "network.protocol.version", "network.transport", "network.type", "url.scheme",
        "service.name", "service.version", "service.namespace", "service.instance.id",
        "telemetry.sdk.name", "telemetry.sdk.language", "telemetry.sdk.version",
        "deployment.environment", "deployment.environment.name", "host.name", "host.arch",
        "os.type", "process.runtime.name", "process.runtime.version", "rpc.system",
        "rpc.service", "rpc.method", "messaging.system", "db.system", "db.system.name",
        "db.operation", "db.operation.name", "db.collection.name", "code.function",
        "code.namespace", "code.filepath", "code.lineno", "error.type", "otel.status_code",
        "otel.scope.name", "thread.name", "k8s.pod.name", "k8s.namespace.name",
    }
)  # fmt: skip
_DROPPED_BY_URLSPLIT = re.compile("[\t\r\n]")
_CACHED_LENGTH = 256  # strings up to this long remember how they were scrubbed
_CACHE_ENTRIES = 20_000
_FILTER, _FILTER_ANY, _SCAN, _URL, _QUERY, _SQL, _KEEP = range(7)  # what to do with a value
_PLAIN = (int, float, bool, type(None))


class Scrubber:
    """Masks secrets by key and by value; one instance per component, reused.

    ``mask`` is the replacement text or a function of the masked text (a hash).
    ``default_rules=False`` leaves only the configured keys and patterns.
    """

    def __init__(
        self,
        extra_keys: Iterable[str] = (),
        extra_patterns: Iterable[str] = (),
        *,
        key_patterns: Iterable[str] = (),
        default_rules: bool = True,
        pii: bool = True,
        mask: str | Masker = FILTERED,
    ) -> None:
        self._defaults = default_rules
        self._denylist = (DEFAULT_DENYLIST if default_rules else frozenset()) | {
            _norm(k) for k in extra_keys
        }
        self._pii_masked = frozenset() if pii else PII_KEYS
        self._key_patterns = [re.compile(p) for p in key_patterns]
        extra = list(extra_patterns)
        self._built_in = [_Rule(re.compile(p), check) for p, check in _BUILT_IN]
        self._extra = _Rule(re.compile("|".join(f"(?:{p})" for p in extra)), "") if extra else None
        self._configured_values = bool(extra)
        self._mask: Masker = _fixed(mask) if isinstance(mask, str) else mask
        self._seen: dict[str, str] = {}
        self._actions: dict[str, int] = {}

    # Keys ------------------------------------------------------------------------------
    def _action(self, key: str) -> int:
        """What to do with a value under ``key``; decided once per key."""
        action = self._actions.get(key)
        if action is None:
            action = self._decide(key)
            if len(self._actions) < 10_000:
                self._actions[key] = action
        return action

    def _decide(self, key: str) -> int:
        if any(pattern.search(key) for pattern in self._key_patterns):
            return _FILTER_ANY
        if key in self._pii_masked or self._judge_key(key):
            return _FILTER
        if not self._defaults:
            return _SCAN
        if key in NOT_SCANNED_KEYS and not self._configured_values:
            return _KEEP
        if key in URL_KEYS:
            return _URL
        if key in QUERY_KEYS:
            return _QUERY
        return _SQL if key in SQL_KEYS else _SCAN

    def skips(self, key: str) -> bool:
        """Values under ``key`` are never changed (names and numbers, not user input)."""
        return self._action(key) == _KEEP

    def sensitive_key(self, key: str) -> bool:
        """Values under ``key`` are masked whole."""
        return self._action(key) in (_FILTER, _FILTER_ANY)

    def masks_any_type(self, key: str) -> bool:
        """Values of every type under ``key`` are masked (a configured key pattern)."""
        return self._action(key) == _FILTER_ANY

    def _judge_key(self, key: str) -> bool:
        if key in _SAFE_KEYS:
            return False
        norm = _norm(key)
        if norm in self._denylist:
            return True
        parts = norm.split(".")
        tail = norm.split(".header.", 1)[-1]
        if tail in self._denylist or any(part in self._denylist for part in parts):
            return True
        return self._defaults and any(_KEY_SUBSTRINGS.search(part) for part in parts)

    # Values ----------------------------------------------------------------------------
    def value(self, text: str) -> str:
        """The text with every secret-looking part masked."""
        if len(text) < 8 or not (self._defaults or self._extra):
            return text
        short = len(text) <= _CACHED_LENGTH
        if short and (known := self._seen.get(text)) is not None:
            return known
        cleaned = self._built_in_rules(text) if self._defaults else text
        if self._extra is not None:
            cleaned = self._extra.apply(cleaned, self._mask)
        if short:
            if len(self._seen) >= _CACHE_ENTRIES:
                self._seen.clear()
            self._seen[text] = cleaned
        return cleaned

    def _built_in_rules(self, text: str) -> str:
        """Each rule runs only when a cheap test says it can match (most text passes none)."""
        keywords, aws, pem, userinfo, jwt, card, iban = self._built_in
        mask, out, low = self._mask, text, text.lower()
        if _KEYWORD_HINT.search(low):
            out = keywords.apply(out, mask)
        if "AWS4-" in text or "AKIA" in text or "ASIA" in text:
            out = aws.apply(out, mask)
        if "-----BEGIN" in text:
            out = pem.apply(out, mask)
        if "@" in text and "://" in text:
            out = userinfo.apply(out, mask)
        if "eyJ" in text:
            out = jwt.apply(out, mask)
        if len(text) >= _MIN_CARD:
            out = card.apply(out, mask)
            if len(text) >= _MIN_IBAN and low != text:  # an IBAN has capital letters
                out = iban.apply(out, mask)
        return out

    def pair(self, key: str, value: Any) -> Any:
        """A key/value attribute as it may leave: masked by key, then by value."""
        if isinstance(value, str):
            return self.string(key, value)
        if isinstance(value, list):
            action = self._action(key)
            if action == _FILTER_ANY or (
                action == _FILTER and any(isinstance(v, str) for v in value)
            ):
                return [self._mask(", ".join(map(str, value)))]
            return [self.pair(key, v) if isinstance(v, str | dict) else v for v in value]
        if isinstance(value, dict):
            return self.mapping(value)
        if self.masks_any_type(key) and value is not None:
            return self._mask(str(value))
        return value

    def string(self, key: str, text: str) -> str:
        """A string under ``key`` as it may leave (the hot path for OTLP attributes)."""
        action = self._action(key)
        if action == _SCAN:
            return self.value(text)
        if action in (_FILTER, _FILTER_ANY):
            return self._mask(text)
        return self.by_action(action, text)

    def by_action(self, action: int, text: str) -> str:
        if action == _KEEP:
            return text
        if action == _URL:
            return self.url(text)
        if action == _QUERY:
            return self.query(text)
        return self.value(self.sql(text))

    def mapping(self, data: dict[str, Any]) -> dict[str, Any]:
        """Every pair of ``data`` as it may leave (one call per span)."""
        out: dict[str, Any] = {}
        actions, value_of, pair = self._actions, self.value, self.pair
        for key, value in data.items():
            if type(value) is str and actions.get(key) == _SCAN:
                out[key] = value_of(value)
            elif type(value) in _PLAIN and not self._key_patterns:
                out[key] = value
            else:
                out[key] = pair(key, value)
        return out

    def url(self, url: str) -> str:
        """A URL without credentials and without the values of sensitive query keys."""
        if ("@" not in url and "?" not in url) or _DROPPED_BY_URLSPLIT.search(url):
            return self.value(url)  # no parts to judge, or not a URL a client sent: text
        try:
            parts = urlsplit(url)
        except ValueError:
            return self.value(url)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = f"{self._mask(netloc.rsplit('@', 1)[0])}@{netloc.rsplit('@', 1)[1]}"
        query = self.query(parts.query)
        if netloc == parts.netloc and query == parts.query:
            return self.value(url)  # unchanged URLs stay as written (not re-assembled)
        return self.value(urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)))

    def query(self, query: str) -> str:
        if not query:
            return query
        pairs = parse_qsl(query, keep_blank_values=True)
        cleaned = [(k, self._mask(v) if self.sensitive_key(k) else self.value(v)) for k, v in pairs]
        if cleaned == pairs:
            return query
        return urlencode(cleaned, safe="[]*")

    def sql(self, statement: str) -> str:
        """SQL without the literals that sensitive columns are compared with or given."""
        low = statement.lower()
        if not any(word in low for word in _SQL_HINTS) or not _SQL_LITERAL_START.search(low):
            return statement
        return _mask_sql_literals(statement, self, self._mask)

    def sensitive_column(self, name: str) -> bool:
        bare = name.strip('"`[]').rpartition(".")[2].lower()
        return bare in _SQL_COLUMNS or self.sensitive_key(bare)

    def triggers(self) -> Triggers | None:
        """What a key or value must hold for this scrubber to change it; None when
        configured patterns decide (they may match any text)."""
        if self._key_patterns or self._extra is not None:
            return None
        pii = tuple(re.escape(key) for key in sorted(self._pii_masked))
        denylist = sorted(self._denylist)
        if not self._defaults:
            return Triggers(words=tuple(denylist), parts=(), patterns=pii, card="",
                            sql_words=(), url_words=(), url_escape="")  # fmt: skip
        uncovered = tuple(
            word for word in denylist
            if word not in _KEY_PARTS and not any(t in word for t in _KEY_WORDS)
        )  # fmt: skip
        return Triggers(
            words=_KEY_WORDS + uncovered + _VALUE_WORDS,
            parts=_KEY_PARTS,
            patterns=_VALUE_PATTERNS + _FOLDS_TO_ASCII + pii,
            card=_CARD_TRIGGER,
            sql_words=(*sorted(_SQL_COLUMNS), *_KEY_PARTS, "password", "identified"),
            url_words=_KEY_PARTS,
            url_escape=_URL_ESCAPE,
        )


@dataclass(frozen=True)
class Triggers:
    """The proof a prefilter needs: a key or value holding none of these is left as it is.

    ``words`` are ASCII-case-insensitive substrings in which ``_`` also stands for ``-``
    (keys are compared lower-cased with ``-`` as ``_``); ``parts`` count only as a whole
    dotted part of a key; ``patterns`` are regular expressions over the raw text.
    ``card`` matches digits that are a secret only when some 13 to 19 of them in a row
    pass the Luhn check (:func:`may_hold_card`). ``sql_words`` count only in values under
    :data:`SQL_KEYS`; ``url_words`` and ``url_escape`` (a percent-escape, which hides any
    word from a byte search) only in the query of values under :data:`URL_KEYS` and in
    values under :data:`QUERY_KEYS`, which are decoded before they are judged.
    """

    words: tuple[str, ...]
    parts: tuple[str, ...]
    patterns: tuple[str, ...]
    card: str
    sql_words: tuple[str, ...]
    url_words: tuple[str, ...]
    url_escape: str


# Each denylisted key and each of Relay's substrings holds one of _KEY_WORDS or is one of
# _KEY_PARTS (a test keeps it so); extra keys that do not are added as they are.
_KEY_WORDS = ("passw", "secret", "api_key", "apikey", "private_key", "privatekey",
              "sentry_key", "auth", "credential", "mysql_pwd", "token", "session",
              "phpsessid", "csrf", "xsrf", "forwarded_for", "cookie", "connect.sid",
              "signature", "otp", "two_factor")  # fmt: skip
_KEY_PARTS = ("pw", "pwd", "sig", "dsn")  # denylisted only as whole parts: short, common
# The literal of every value rule (_KEYWORD_PATTERNS, then the others of _BUILT_IN), as
# loose as the rule is: "+" stands for a space (query strings decode it to one).
_VALUE_WORDS = ("bearer", "basic", "token", "apikey", "api_key", "digest", "authorization",
                "passw", "secret", "access_key", "accesskey")  # fmt: skip
_VALUE_PATTERNS = (
    r"(?i:pwd?[\"']?[ \t+]*[:=])",
    r"AWS4-|AKIA|ASIA",
    r"-----BEGIN",
    r"//[^/@]*@",  # a user (and password) in a URL, also where urlsplit finds the netloc
    r"eyJ",
    r"[A-Z]{2}[0-9]{2}[ +]?[A-Z0-9]{4}[ +]?[A-Z0-9]{4}",
)
_CARD_TRIGGER = r"[0-9](?:[ +-]?[0-9]){12}"
_URL_ESCAPE = r"%[0-9A-Fa-f]{2}"
#: Characters that lower-case to, or match case-insensitively, an ASCII letter: a word
#: spelled with one of them is still a word to ``str.lower`` and ``re.IGNORECASE``.
_FOLDS_TO_ASCII = ("\u0130", "\u0131", "\u017f", "\u212a")
_CARD_DIGITS = range(13, 20)
_DOUBLE_SEPARATOR = re.compile(r"[ -]{2,}")
_LONGEST_CARD_RUN = 48  # digits: a longer run is taken to hold one (bounded checking)


def may_hold_card(run: str) -> bool:
    """Whether the card rule could mask part of ``run`` (digits, spaces, ``-`` and ``+``)
    wherever it stands: some 13 to 19 digits in a row, single separators between them,
    pass the Luhn check."""
    for segment in _DOUBLE_SEPARATOR.split(run.replace("+", " ")):
        digits = "".join(char for char in segment if char.isdigit())
        if len(digits) > _LONGEST_CARD_RUN:
            return True
        for length in _CARD_DIGITS:
            for start in range(len(digits) - length + 1):
                if _luhn_ok(digits[start : start + length]):
                    return True
    return False


class _Rule:
    """One value pattern, the test that lets it be skipped, and how a match is masked."""

    def __init__(self, pattern: re.Pattern[str], check: str) -> None:
        self.pattern = pattern
        self.check = check
        self.groups = [name for name in _SECRET_GROUPS if name in pattern.groupindex]

    def apply(self, text: str, mask: Masker) -> str:
        def replace(match: re.Match[str]) -> str:
            return self._replace(match, mask)

        if len(text) <= CHUNK:
            return self.pattern.sub(replace, text)
        return _scan_in_windows(self.pattern, text, replace)

    def _replace(self, match: re.Match[str], mask: Masker) -> str:
        text = match.group(0)
        for name in self.groups:
            secret = match.group(name)
            if secret is not None:
                start, end = match.span(name)
                offset = match.start()
                return text[: start - offset] + mask(secret) + text[end - offset :]
        if self.check == "card":
            return _mask_card(text, mask)
        if self.check == "iban" and not _iban_ok(text):
            return text
        return mask(text)


def check_patterns(patterns: list[str]) -> list[str]:
    """A settings validator: every entry is a regular expression."""
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{pattern!r} is not a regular expression: {exc}") from exc
    return patterns


def _fixed(mask: str) -> Masker:
    def masked(_text: str) -> str:
        return mask

    return masked


def _scan_in_windows(
    pattern: re.Pattern[str], text: str, replace: Callable[[re.Match[str]], str]
) -> str:
    """``pattern.sub`` over ``text`` one window at a time (bounded time per call): a match
    that reaches a window's end is matched again against the whole rest of the text."""
    out: list[str] = []
    written = position = 0
    size = len(text)
    while position < size:
        end = min(size, position + CHUNK)
        window_end = min(size, end + _OVERLAP)
        search_from = position
        while True:
            match = pattern.search(text, search_from, window_end)
            if match is None or match.start() >= end:
                break
            if match.end() == window_end < size:
                match = pattern.match(text, match.start())
                if match is None:
                    search_from += 1
                    continue
            out.append(text[written : match.start()])
            out.append(replace(match))
            written = match.end()
            search_from = max(written, match.start() + 1)
        position = max(end, written)
    out.append(text[written:])
    return "".join(out)


def _mask_card(text: str, mask: Masker) -> str:
    """The longest run of whole groups from the start of ``text`` that is a card number,
    masked: a grouped card may be followed by another number ("4111 1111 1111 1111 200")
    that the pattern took in."""
    parts = _CARD_SEPARATOR.split(text)  # groups, with the separators between them
    for end in range(len(parts), 0, -2):
        digits = "".join(parts[:end:2])
        if len(digits) in _CARD_DIGITS and _luhn_ok(digits):
            return mask("".join(parts[:end])) + "".join(parts[end:])
    return text


_CARD_SEPARATOR = re.compile(r"([ -])")


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


def _norm(key: str) -> str:
    return key.lower().replace("-", "_")


# SQL -----------------------------------------------------------------------------------
_SQL_HINTS = ("pass", "pw", "secret", "token", "key", "auth", "cred", "pin", "cvv", "cvc",
              "ssn", "identified", "otp", "session", "sig")  # fmt: skip
_SQL_COLUMNS = frozenset({"pw", "pwd", "pass", "passwd", "passcode", "pin", "cvv", "cvc", "ssn"})
_SQL_LITERAL_START = re.compile(r"['\d]")
_SQL_TOKEN = re.compile(
    r"""(?P<str>'(?:[^'\\]|''|\\.)*'?)"""
    r"""|(?P<qid>"(?:[^"]|"")*"?|`[^`]*`?|\[[^\]]*\]?)"""
    r"""|(?P<num>-?\d[\w.]*)"""
    r"""|(?P<word>[A-Za-z_][\w$]*(?:\.[A-Za-z_][\w$]*)*)"""
    r"""|(?P<op>:=|<>|!=|>=|<=|[=(),;])"""
    r"""|(?P<other>\s+|.)""",
    re.DOTALL,
)
_COMPARE = frozenset({"=", ":=", "<>", "!=", "like", "ilike"})


def _mask_sql_literals(statement: str, scrubber: Scrubber, mask: Masker) -> str:
    """One pass over the tokens: literals after ``<sensitive column> <op>``, in sensitive
    columns of ``INSERT ... VALUES``, and after ``PASSWORD`` / ``IDENTIFIED BY`` up to the
    next clause (``SET PASSWORD FOR 'u' = 'x'``, ``WITH PASSWORD 'x'``)."""
    out: list[str] = []
    previous: list[str] = ["", ""]  # the last two significant tokens (words lowered)
    insert = _InsertColumns()
    after_password = False
    for token in _SQL_TOKEN.finditer(statement):
        kind, text = token.lastgroup, token.group(0)
        if kind == "other":
            out.append(text)
            continue
        lowered = text.lower()
        if kind in ("str", "num") and (
            after_password
            or (previous[1] in _COMPARE and scrubber.sensitive_column(previous[0]))
            or insert.sensitive_value(scrubber)
        ):
            quote = "'" if kind == "str" else ""
            text = quote + mask(text.strip("'")) + quote
        elif lowered == "password" or (lowered == "by" and previous[1] == "identified"):
            after_password = True
        elif lowered in _CLAUSE_ENDS:
            after_password = False
        insert.see(kind, lowered, text)
        previous = [previous[1], text if kind == "qid" else lowered]
        out.append(text)
    return "".join(out)


_CLAUSE_ENDS = frozenset(
    {";", ",", "from", "where", "and", "or", "select", "values", "on", "returning", "limit",
     "order", "group", "having", "into", "union", "then", "when"}
)  # fmt: skip


class _InsertColumns:
    """Follows ``INSERT INTO t (a, b) VALUES (x, y), (...)`` to know each value's column."""

    def __init__(self) -> None:
        self.state = "none"  # none, table, columns, after_columns, values
        self.columns: list[str] = []
        self.depth = 0
        self.index = 0

    def see(self, kind: str | None, lowered: str, text: str) -> None:
        if lowered == ";":
            self.__init__()  # type: ignore[misc]
        elif kind == "word" and lowered == "insert":
            self.__init__()  # type: ignore[misc]
            self.state = "table"
        elif self.state == "table" and lowered == "(":
            self.state = "columns"
        elif self.state == "columns":
            if lowered == ")":
                self.state = "after_columns"
            elif kind in ("word", "qid"):
                self.columns.append(text)
        elif self.state == "after_columns" and lowered == "values":
            self.state = "values"
        elif self.state == "values":
            self._in_values(lowered)

    def _in_values(self, lowered: str) -> None:
        if lowered == "(":
            self.depth += 1
            if self.depth == 1:
                self.index = 0
        elif lowered == ")":
            self.depth = max(0, self.depth - 1)
        elif lowered == "," and self.depth == 1:
            self.index += 1

    def sensitive_value(self, scrubber: Scrubber) -> bool:
        return (
            self.state == "values"
            and self.depth == 1
            and self.index < len(self.columns)
            and scrubber.sensitive_column(self.columns[self.index])
        )


# The collector's own output ------------------------------------------------------------
_OUTPUT = Scrubber(mask=MASK)
_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]{1,30}://[^\s'\"<>]+")


def redact_url(url: str) -> str:
    """A URL fit to print: no password (nor a long user name standing alone, which is a
    key in a Sentry DSN or a token in a Git URL), no values of sensitive query keys."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return _OUTPUT.value(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        if password is not None:
            netloc = f"{user}:{MASK}@{host}" if user else f"{MASK}@{host}"
        elif len(user) >= _KEY_LIKE_USER:
            netloc = f"{MASK}@{host}"
    query = _OUTPUT.query(parts.query)
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


_KEY_LIKE_USER = 16  # a user name this long is a credential (a DSN's key, a token)


def redact_text(text: str) -> str:
    """Free text fit to print: every URL in it redacted, the rest scrubbed by value."""
    if "://" not in text:
        return _OUTPUT.value(text)
    out: list[str] = []
    written = 0
    for match in _URL_IN_TEXT.finditer(text):
        url = match.group(0).rstrip(".,:;!?)")
        out.append(_OUTPUT.value(text[written : match.start()]))
        out.append(redact_url(url))
        written = match.start() + len(url)
    out.append(_OUTPUT.value(text[written:]))
    return "".join(out)


_SECRET_SETTINGS = frozenset({"headers", "dsn", "htpasswd", "inline", "client_auth", "key_pem"})


def is_secret_setting(path: str) -> bool:
    """A configuration setting whose value is never printed (``exporters.x.headers``,
    ``extensions.bearertokenauth.token``, ``exporters.sentry.dsn`` ...)."""
    parts = [part for part in re.split(r"[.\[\]]", path.lower()) if part and not part.isdigit()]
    return any(part in _SECRET_SETTINGS or _OUTPUT.sensitive_key(part) for part in parts)


class RedactingFormatter(logging.Formatter):
    """Log lines with every URL and secret-looking value in them redacted."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))
