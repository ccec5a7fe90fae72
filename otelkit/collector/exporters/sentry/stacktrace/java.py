"""Java (and Kotlin, Scala) stack traces: ``Type: message``, ``\tat pkg.Class.method(File.java:42)``,
``Caused by:`` chains, ``Suppressed:`` sections skipped. Printed newest call first."""

from __future__ import annotations

import re

from otelkit.collector.exporters.sentry.stacktrace.model import (
    Block,
    Frame,
    append_line,
    newest_first,
    number,
)

_HEAD = re.compile(r'(?:Exception in thread "[^"]*" )?(?P<type>[\w.$]+)(?:: (?P<value>.*))?')
_NAME = re.compile(r"[\w.$<>\-]+")
_SOURCES = (".java:", ".kt:", ".scala:", ".groovy:")
_LIBRARY = ("java.", "javax.", "jdk.", "sun.", "com.sun.", "kotlin.", "scala.")


def is_java_line(line: str) -> bool:
    if line.startswith("\tat "):
        return True
    frame = _frame_parts(line)
    return frame is not None and any(source in frame[2] for source in _SOURCES)


def read(lines: list[str]) -> list[Block]:
    blocks: list[Block] = []
    block: Block | None = None
    suppressed = False
    for raw in lines:
        line = raw.rstrip()
        text = line.strip()
        if not text:
            continue
        parts = _frame_parts(line)
        if parts is not None and block is not None:
            if not suppressed:
                block.frames.append(_frame(*parts))
            continue
        if text.startswith("... ") and text.endswith(("more", "common frames omitted")):
            continue
        if text.startswith("Suppressed: "):
            suppressed = True
            continue
        cause = text.removeprefix("Caused by: ") if text.startswith("Caused by: ") else None
        head = _HEAD.fullmatch(cause if cause is not None else text)
        if cause is not None or block is None:
            suppressed = False
            block = Block(link="cause" if cause is not None else None)
            blocks.append(block)
            if head:
                block.type, block.value = head.group("type"), head.group("value") or ""
            else:
                block.type, block.value = "Exception", text
        elif not suppressed and not block.frames:
            append_line(block, line)
    return newest_first(blocks)


def _frame_parts(line: str) -> tuple[str, str, str] | None:
    """(class, method, location) of ``at [module/]pkg.Class.method(location)``."""
    text = line.strip()
    if not text.startswith("at ") or line[:1] not in (" ", "\t"):
        return None
    rest = text[3:]
    opening = rest.find("(")
    closing = rest.find(")", opening + 1)
    if opening <= 0 or closing < 0:
        return None
    qualified = rest[:opening].rpartition("/")[2]
    cls, dot, method = qualified.rpartition(".")
    if not dot or not cls or not _NAME.fullmatch(cls) or not _NAME.fullmatch(method):
        return None
    return cls, method, rest[opening + 1 : closing]


def _frame(cls: str, method: str, location: str) -> Frame:
    frame: Frame = {"module": cls, "function": method, "in_app": not cls.startswith(_LIBRARY)}
    filename, _, lineno = location.partition(":")
    if filename and filename not in ("Native Method", "Unknown Source"):
        frame["filename"] = filename
    line = number(lineno)
    if line is not None:
        frame["lineno"] = line
    return frame
