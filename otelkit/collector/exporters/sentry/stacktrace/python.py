"""Python tracebacks, read completely: chained causes and contexts (with their mechanism),
exception groups (as deep as Python prints them), SyntaxError's location frame, caret and
``[Previous line repeated ...]`` lines. Printed oldest call first, as Sentry lists them."""

from __future__ import annotations

import re
from typing import Any

from otelkit.collector.exporters.sentry.stacktrace.model import Block, Frame, append_line, number

HEADER = "Traceback (most recent call last):"
GROUP_HEADER = "Exception Group Traceback (most recent call last):"
_CAUSE = "The above exception was the direct cause of the following exception:"
_CONTEXT = "During handling of the above exception, another exception occurred:"
_FRAME = re.compile(r'  File "(?P<path>[^"]+)", line (?P<lineno>\d+)(?:, in (?P<func>.+))?')
_REPEATED = "[Previous line repeated "
_TYPE = re.compile(r"(?P<type>[A-Za-z_][\w.]*)(?::(?: (?P<value>.*))?)?")
_STDLIB = re.compile(r"[/\\]lib[/\\]python\d(?:\.\d+)?[/\\]|^<frozen |[/\\]Lib[/\\]")
_LIBRARY = re.compile(r"[/\\](?:site|dist)-packages[/\\]")
_CHILD_HEAD = re.compile(r"\+-+ \d+ -+")
# traceback prints groups at most 10 deep (max_group_depth); deeper text is not Python's.
_MAX_GROUP_INDENT = 2 + 2 * 10


def is_python_line(line: str) -> bool:
    return line in (HEADER, GROUP_HEADER) or line.startswith(("  | ", "  + Exception Group"))


def read(lines: list[str]) -> list[Block]:
    return _chain(_region(lines, 0, top=True))


class _Children:
    """The sub-exception regions that follow a group's type line."""

    def __init__(self, regions: list[list[str]], indent: int) -> None:
        self.regions = regions
        self.indent = indent


def _region(lines: list[str], indent: int, *, top: bool) -> list[str | _Children]:
    """Flatten one exception-group margin level into content lines and child regions.

    At ``indent`` K a region's lines are ``K| text`` (content), ``K+ Exception Group
    Traceback`` (a header), ``K+-+--- 1 ---`` (children start), children at K+2.
    The top level also carries plain, unprefixed traceback lines.
    """
    out: list[str | _Children] = []
    margin = 2 if top else indent
    pad = " " * margin
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if top and not line.startswith(("  |", "  +")):
            out.append(line)
            continue
        if not line.startswith(pad):
            continue
        rest = line[margin:]
        if rest.startswith("+-+"):
            regions, i = _children(lines, i, margin + 2)
            if margin + 2 <= _MAX_GROUP_INDENT:
                out.append(_Children(regions, margin + 2))
        elif rest.startswith("+ Exception Group Traceback"):
            out.append(GROUP_HEADER)
        elif rest.startswith("|"):
            out.append(rest[2:])
    return out


def _children(lines: list[str], start: int, indent: int) -> tuple[list[list[str]], int]:
    """Child regions (lines with the margin kept) from ``start``; returns the next index."""
    pad = " " * indent
    regions: list[list[str]] = [[]]
    i = start
    while i < len(lines) and lines[i].startswith(pad) and len(lines[i]) > indent:
        body = lines[i][indent:]
        if body.startswith("+--"):
            if _CHILD_HEAD.fullmatch(body):
                regions.append([])
            elif not body.strip("+-"):
                i += 1
                break
        else:
            regions[-1].append(lines[i])
        i += 1
    return [r for r in regions if r], i


def _chain(items: list[str | _Children]) -> list[Block]:
    blocks: list[Block] = []
    block: Block | None = None
    pending_link: str | None = None
    for item in items:
        if isinstance(item, _Children):
            if block is not None:
                block.children = [
                    _chain(_region(region, item.indent, top=False)) for region in item.regions
                ]
            continue
        line = item.rstrip()
        if not line.strip():
            continue
        if line in (HEADER, GROUP_HEADER):
            block = Block(link=pending_link, is_group=line == GROUP_HEADER)
            blocks.append(block)
            pending_link = None
        elif line in (_CAUSE, _CONTEXT):
            pending_link = "__cause__" if line == _CAUSE else "__context__"
            block = None
        elif (match := _FRAME.fullmatch(line)) and (block is None or block.type is None):
            if block is None:
                block = Block(link=pending_link)
                blocks.append(block)
                pending_link = None
            _add_frame(block, match)
        elif block is not None and block.type is None and line.startswith("    "):
            if (
                block.frames
                and "context_line" not in block.frames[-1]
                and not _is_caret(line)
                and not _is_repeat(line)
            ):
                block.frames[-1]["context_line"] = line.strip()
        elif _is_repeat(line) or (_is_caret(line) and block and block.type is None):
            continue
        elif block is not None and block.type is not None:
            append_line(block, line)
        else:
            if block is None:
                block = Block(link=pending_link)
                blocks.append(block)
                pending_link = None
            _type_line(block, line)
    return [b for b in blocks if b.type is not None or b.frames]


def _is_caret(line: str) -> bool:
    mark = line.strip()
    return bool(mark) and not mark.strip("~^")


def _is_repeat(line: str) -> bool:
    text = line.strip()
    return text.startswith(_REPEATED) and text.endswith(("more times]", "more time]"))


def _type_line(block: Block, line: str) -> None:
    match = _TYPE.fullmatch(line)
    if match is None:
        block.type, block.value = "Error", line
        return
    block.type, block.value = match.group("type"), match.group("value") or ""
    value, suffix = _split_group_suffix(block.value)
    if block.children or suffix:
        block.is_group = True
        block.value = value


def _split_group_suffix(value: str) -> tuple[str, bool]:
    """``msg (3 sub-exceptions)`` -> (``msg``, True)."""
    if not value.endswith((" sub-exceptions)", " sub-exception)")):
        return value, False
    head, _, count = value.rpartition(" (")
    if count.partition(" ")[0].isdigit():
        return head, True
    return value, False


def _add_frame(block: Block, match: re.Match[str]) -> None:
    lineno = number(match.group("lineno"))
    if lineno is None:
        return
    path = match.group("path")
    frame: Frame = {"abs_path": path, "lineno": lineno}
    func = match.group("func")
    if func:
        frame["function"] = func
    frame.update(_location(path))
    block.frames.append(frame)


_LOCATIONS: dict[str, dict[str, Any]] = {}


def _location(path: str) -> dict[str, Any]:
    """filename, in_app and module for a path; cached, as the same files recur."""
    known = _LOCATIONS.get(path)
    if known is not None:
        return known
    marker = _LIBRARY.search(path) or _STDLIB.search(path)
    if marker is None:
        location: dict[str, Any] = {"filename": path, "in_app": True}
    else:
        relative = path if path.startswith("<") else path[marker.end() :]
        location = {"filename": relative, "in_app": False}
        if relative.endswith(".py") and not relative.startswith("<"):
            module = relative[:-3].replace("/", ".").replace("\\", ".")
            location["module"] = module.removesuffix(".__init__")
    if len(_LOCATIONS) >= 4096:
        _LOCATIONS.clear()
    _LOCATIONS[path] = location
    return location
