"""``exception.stacktrace`` text -> Sentry ``exception.values``.

OpenTelemetry records a stack trace as the language prints it. Python tracebacks are read
completely; Java, JavaScript (V8: Chrome, Edge, Node.js; Firefox; Safari), Go and .NET
traces where their shape is clear. Anything else gives one value with the recorded type
and message and no frames: parsing never fails an export.

The text is user input, so reading it costs time linear in its length and is bounded:
at most :data:`~.model.MAX_TEXT` characters in :data:`~.model.MAX_LINES` lines are read
(the middle of a longer text is skipped, as frames beyond 200 per exception are), each
line is looked at a bounded number of times with string methods or anchored patterns
that cannot backtrack, and exception groups are followed as deep as Python prints them.

Sentry lists chained exceptions oldest first (the main exception last) and frames oldest
call first, which is the order Python prints them in; the other languages print the
newest call first, so their frames are reversed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from otelkit.collector.exporters.sentry.stacktrace import dotnet, go, java, javascript, python
from otelkit.collector.exporters.sentry.stacktrace.model import (
    MAX_VALUE,
    Block,
    Frame,
    Value,
    bounded_lines,
)

MAX_FRAMES = 200  # per exception: the first and last half are kept, like Relay does
MAX_EXCEPTIONS = 50  # values per event: the main exception and the nearest to it
# Characters of an exception's type and of its module that Relay keeps. A longer type
# (an app that put a message or a whole trace there) is cut here, not left to make the
# event too large for Sentry and be dropped whole.
MAX_SYMBOL = 256

__all__ = ["MAX_FRAMES", "MAX_VALUE", "Parsed", "parse"]


@dataclass
class Parsed:
    values: list[Value]
    platform: str | None  # the language the text was recognised as, None if not


def parse(text: str, type_hint: str = "", message_hint: str = "", handled: bool = True) -> Parsed:
    """Sentry exception values for a recorded stack trace; never raises."""
    try:
        found = _read(bounded_lines(text or ""))
    except Exception:  # a reader bug must not lose the error itself
        found = None
    if found is None or not found[0]:
        return Parsed([_fallback(type_hint, message_hint, handled)], None)
    chain, platform = found
    main = chain[-1]
    if main.type is None or (main.type == "Error" and type_hint):
        main.type = type_hint or "Error"
    if not main.value:
        main.value = message_hint
    return Parsed(_values(chain, handled, platform), platform)


def _read(lines: list[str]) -> tuple[list[Block], str] | None:
    language = detect(lines)
    if language == "v8":
        blocks, browser = javascript.read_v8(lines)
        return blocks, "javascript" if browser else "node"
    if language is None:
        return None
    return _READERS[language](lines), _PLATFORMS[language]


_READERS: dict[str, Callable[[list[str]], list[Block]]] = {
    "python": python.read,
    "java": java.read,
    "go": go.read,
    "dotnet": dotnet.read,
    "gecko": javascript.read_gecko,
}
_PLATFORMS = {"python": "python", "java": "java", "go": "go", "dotnet": "csharp",
              "gecko": "javascript"}  # fmt: skip
_PRIORITY = ("python", "java", "v8", "go", "dotnet", "gecko")


def detect(lines: list[str]) -> str | None:
    """The language whose lines appear, in :data:`_PRIORITY` order; one look per line."""
    seen: set[str] = set()
    for line in lines:
        kind = _kind(line)
        if kind == "python":
            return kind
        if kind is not None:
            seen.add(kind)
    return next((language for language in _PRIORITY if language in seen), None)


def _kind(line: str) -> str | None:
    if python.is_python_line(line):
        return "python"
    if java.is_java_line(line):
        return "java"
    stripped = line.strip()
    if stripped.startswith("at "):
        if javascript.has_position(javascript.v8_frame(stripped)):
            return "v8"
        return "dotnet" if dotnet.is_dotnet_line(line) else None
    if go.is_go_line(line):
        return "go"
    if "@" in stripped and javascript.gecko_frame(stripped) is not None:
        return "gecko"
    return None


def _fallback(type_: str, message: str, handled: bool) -> Value:
    type_ = type_ or "Error"
    value: Value = {
        "type": _symbol(type_),
        "value": _trim(message),
        "mechanism": {"type": "otel", "handled": handled},
    }
    if "." in type_ and " " not in type_:
        module, _, name = type_.rpartition(".")
        value["module"], value["type"] = _symbol(module), _symbol(name)
    return value


def _values(chain: list[Block], handled: bool, platform: str) -> list[Value]:
    """Sentry values with exception ids: the main exception is id 0 and listed last."""
    out: list[tuple[int, Value]] = []
    counter = [0]
    nested = len(chain) > 1 or any(b.children for b in chain)

    def add_chain(blocks: list[Block], parent: int | None, source: str | None) -> None:
        link_source, link_parent = source, parent
        for index in range(len(blocks) - 1, -1, -1):
            if counter[0] >= MAX_EXCEPTIONS:
                return
            block = blocks[index]
            ident = counter[0]
            counter[0] += 1
            out.append((ident, _value(block, handled, platform, ident, link_parent,
                                      link_source, nested)))  # fmt: skip
            for k, child in enumerate(block.children):
                add_chain(child, ident, f"exceptions[{k}]")
            link_source = _source(block.link, platform)
            link_parent = ident

    add_chain(chain, None, None)
    out.sort(key=lambda pair: -pair[0])
    return [value for _, value in out]


def _source(link: str | None, platform: str) -> str | None:
    return link or ("__context__" if platform == "python" else "cause")


def _value(
    block: Block,
    handled: bool,
    platform: str,
    ident: int,
    parent: int | None,
    source: str | None,
    nested: bool,
) -> Value:
    type_ = block.type or "Error"
    value: Value = {"type": _symbol(type_), "value": _trim(block.value)}
    if platform in ("python", "java") and "." in type_:
        module, _, name = type_.rpartition(".")
        value["module"], value["type"] = _symbol(module), _symbol(name)
    mechanism: Value = {"type": "otel" if parent is None else "chained", "handled": handled}
    if nested:
        mechanism["exception_id"] = ident
        if parent is not None:
            mechanism["parent_id"] = parent
            if source:
                mechanism["source"] = source
    if block.is_group or block.children:
        mechanism["is_exception_group"] = True
    value["mechanism"] = mechanism
    if block.frames:
        value["stacktrace"] = {"frames": _limit(block.frames)}
    return value


def _limit(frames: list[Frame]) -> list[Frame]:
    if len(frames) <= MAX_FRAMES:
        return frames
    half = MAX_FRAMES // 2
    return frames[:half] + frames[-half:]


def _trim(text: str) -> str:
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 1] + "…"


def _symbol(text: str) -> str:
    return text if len(text) <= MAX_SYMBOL else text[: MAX_SYMBOL - 1] + "…"
