"""JavaScript stack traces: V8 (Chrome, Edge, Node.js) and Gecko/WebKit (Firefox, Safari).

* V8: an optional ``Type: message`` head, then ``    at fn (url:line:col)``,
  ``    at url:line:col`` (anonymous), ``    at async fn (...)``, ``    at new Foo (...)``,
  ``    at eval (eval at fn (url:line:col), <anonymous>:1:1)`` and native frames such as
  ``    at Array.map (<anonymous>)``.
* Firefox and Safari: frames only, ``fn@url:line:col``, ``@url:line:col`` (anonymous),
  ``async*fn@...`` (Firefox async), ``fn@url line 26 > eval:1:30`` (Firefox eval),
  ``global code@...``, ``eval code`` and ``fn@[native code]`` (Safari).

As Sentry's JavaScript SDK does, an eval frame points at the line that called ``eval``, an
anonymous function is ``?``, and frames are listed oldest call first. ``abs_path`` is the
URL or path as printed, ``filename`` its path part (what Sentry shows). Frames are not
in-app when they come from ``node_modules`` (including bundler chunks named after it),
Node.js internals, browser extensions, native code, or a well-known third-party CDN.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from otelkit.collector.exporters.sentry.stacktrace.model import Block, Frame, number

UNKNOWN_FUNCTION = "?"
_HEAD = re.compile(r"(?P<type>[A-Za-z_$][\w$.]*)(?:: (?P<value>.*))?")
_NATIVE = frozenset({"native", "native code", "[native code]", "<anonymous>", "unknown location"})
_NOT_APP_PREFIXES = (
    "node:", "internal/", "chrome-extension:", "moz-extension:", "safari-extension:",
    "safari-web-extension:", "chrome:", "resource:", "about:",
)  # fmt: skip
_BROWSER_PREFIXES = (
    "http:", "https:", "blob:", "webpack:", "webpack-internal:", "chrome-extension:",
    "moz-extension:", "safari-extension:", "safari-web-extension:", "resource:", "about:",
    "[native code]",
)  # fmt: skip
#: Hosts that serve other people's code: frames from them are not the application's.
THIRD_PARTY_HOSTS = (
    "cdn.jsdelivr.net", "unpkg.com", "cdnjs.cloudflare.com", "ajax.googleapis.com",
    "code.jquery.com", "cdn.skypack.dev", "esm.sh", "ga.jspm.io", "jspm.dev",
    "stackpath.bootstrapcdn.com", "maxcdn.bootstrapcdn.com", "cdn.tailwindcss.com",
    "googletagmanager.com", "google-analytics.com", "connect.facebook.net", "js.stripe.com",
    "static.cloudflareinsights.com", "browser.sentry-cdn.com", "js.sentry-cdn.com",
    "cdn.segment.com", "widget.intercom.io", "js.intercomcdn.com", "maps.googleapis.com",
)  # fmt: skip


# V8 ---------------------------------------------------------------------------------
def v8_frame(line: str) -> Frame | None:
    """A frame from one stripped ``at ...`` line, or None when it is not one."""
    if not line.startswith("at "):
        return None
    rest = line[3:].strip()
    function: str | None = None
    location = rest
    if rest.endswith(")"):
        spaced, opening = rest.find(" ("), rest.find("(")
        if spaced >= 0:
            function, location = rest[:spaced], rest[spaced + 2 : -1]
        elif opening > 0 and _looks_like_name(rest[:opening]):  # ``fn(url)`` (webpack eval)
            function, location = rest[:opening], rest[opening + 1 : -1]
    is_eval = location.startswith("eval at ")
    if is_eval:
        location = _innermost(location)
    location = location.removeprefix("async ").removeprefix("address at ")
    path, lineno, colno = split_location(location)
    if lineno is None and (function is None or not path):
        return None
    if function is not None:
        function = function.removeprefix("async ").removeprefix("new ").strip()
    if is_eval and not function:
        function = "eval"
    return js_frame(path, lineno, colno, function)


def has_position(frame: Frame | None) -> bool:
    return frame is not None and "lineno" in frame and "colno" in frame


def read_v8(lines: list[str]) -> tuple[list[Block], bool]:
    """The exception and whether its frames came from a browser (not Node.js)."""
    block = Block()
    head: list[str] = []
    for raw in lines:
        line = raw.strip()
        frame = v8_frame(line) if line.startswith("at ") else None
        if frame is not None:
            block.frames.append(frame)
        elif not block.frames and line:
            head.append(raw.rstrip())
    _set_head(block, head)
    block.frames.reverse()
    return [block], any(_is_browser(f["abs_path"]) for f in block.frames)


def _looks_like_name(text: str) -> bool:
    return bool(text) and " " not in text and "/" not in text and ":" not in text


def _innermost(location: str) -> str:
    """``eval at f (eval at g (url:1:2)), <anonymous>:3:4`` -> ``url:1:2``."""
    closing = location.find(")")
    opening = location.rfind("(", 0, closing) if closing > 0 else -1
    return location[opening + 1 : closing] if opening >= 0 else location


# Firefox / Safari ---------------------------------------------------------------------
def gecko_frame(line: str) -> Frame | None:
    """A frame from one stripped Firefox/Safari line, or None when it is not one."""
    if line == "[native code]":
        return js_frame(line, None, None, None)
    function, at, location = line.partition("@")
    if not at or "://" in function:
        function, location = "", line  # Safari's anonymous frames print the URL alone
    if " > eval" in location or " > Function" in location:
        url, _, rest = location.partition(" line ")
        lineno = number(rest.partition(" ")[0])
        if not url or lineno is None:
            return None
        return js_frame(url, lineno, None, _gecko_function(function) or "eval")
    path, lineno, colno = split_location(location)
    if path != "[native code]" and (lineno is None or not _is_location(path)):
        return None
    if not at and not _is_browser(path):
        return None
    return js_frame(path, lineno, colno, _gecko_function(function))


def read_gecko(lines: list[str]) -> list[Block]:
    block = Block()
    head: list[str] = []
    for raw in lines:
        line = raw.strip()
        frame = gecko_frame(line) if line else None
        if frame is not None:
            block.frames.append(frame)
        elif not block.frames and line and line != "eval code":
            head.append(raw.rstrip())
    if head:
        _set_head(block, head)
    block.frames.reverse()
    return [block]


def _gecko_function(text: str) -> str | None:
    """``async*fn`` -> ``fn``; Firefox 3's ``bar(1)`` -> ``bar``; ``()`` -> None."""
    name = text.strip().removeprefix("async*")
    if name.endswith(")") and "(" in name:
        name = name[: name.find("(")]
    return name or None


def _is_location(path: str) -> bool:
    return "://" in path or path.startswith(("/", "blob:", "webpack:")) or path in _NATIVE


# Shared -------------------------------------------------------------------------------
def split_location(location: str) -> tuple[str, int | None, int | None]:
    """``url:12:5`` -> (url, 12, 5); ``url:12`` -> (url, 12, None); else (text, None, None)."""
    head, colon, last = location.rpartition(":")
    last_number = number(last) if colon else None
    if last_number is None:
        return location, None, None
    path, colon, middle = head.rpartition(":")
    middle_number = number(middle) if colon else None
    if middle_number is None:
        return head, last_number, None
    return path, middle_number, last_number


def js_frame(path: str, lineno: int | None, colno: int | None, function: str | None) -> Frame:
    filename, app = _location(path)
    frame: Frame = {
        "abs_path": path,
        "filename": filename,
        "function": function or UNKNOWN_FUNCTION,
        "in_app": app,
    }
    if lineno is not None:
        frame["lineno"] = lineno
    if colno is not None:
        frame["colno"] = colno
    return frame


_LOCATIONS: dict[str, tuple[str, bool]] = {}


def _location(path: str) -> tuple[str, bool]:
    """filename and in_app for a path; cached, as the same files recur."""
    known = _LOCATIONS.get(path)
    if known is None:
        if len(_LOCATIONS) >= 4096:
            _LOCATIONS.clear()
        known = _LOCATIONS[path] = (_filename(path), in_app(path))
    return known


def in_app(path: str) -> bool:
    if "node_modules" in path or path in _NATIVE or path.startswith(_NOT_APP_PREFIXES):
        return False
    if "://" not in path:
        return True
    host = _host(path)
    return not any(host == known or host.endswith("." + known) for known in THIRD_PARTY_HOSTS)


def _is_browser(path: str) -> bool:
    return path.startswith(_BROWSER_PREFIXES)


def _filename(path: str) -> str:
    """The path part of a URL (what Sentry shows as the file name); a path as it is."""
    if "://" not in path or path.startswith("file:"):
        return path
    try:
        return urlsplit(path).path or path
    except ValueError:
        return path


def _host(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


def _set_head(block: Block, head: list[str]) -> None:
    first = _HEAD.fullmatch(head[0]) if head else None
    if first:
        block.type = first.group("type")
        block.value = "\n".join([first.group("value") or "", *head[1:]]).strip()
    else:
        block.type, block.value = "Error", "\n".join(head)
