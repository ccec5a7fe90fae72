"""``exception.stacktrace`` text -> Sentry ``exception.values``.

OpenTelemetry records a stack trace as the language prints it. Python tracebacks are read
completely: chained causes and contexts (with their mechanism), exception groups at any
depth, SyntaxError's location frame, caret and ``[Previous line repeated ...]`` lines.
Java, Node.js, Go and .NET traces are read where their shape is clear. Anything else
gives one value with the recorded type and message and no frames: parsing never fails
an export.

Sentry lists chained exceptions oldest first (the main exception last) and frames oldest
call first, which is the order Python prints them in; Java, Node.js, Go and .NET print
the newest call first, so their frames are reversed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

Value = dict[str, Any]
Frame = dict[str, Any]

MAX_FRAMES = 200  # per exception: the first and last half are kept, like Relay does
MAX_VALUE = 8192

_PY_HEADER = "Traceback (most recent call last):"
_PY_GROUP_HEADER = "Exception Group Traceback (most recent call last):"
_PY_CAUSE = "The above exception was the direct cause of the following exception:"
_PY_CONTEXT = "During handling of the above exception, another exception occurred:"
_PY_FRAME = re.compile(r'^  File "(?P<path>[^"]+)", line (?P<lineno>\d+)(?:, in (?P<func>.+))?$')
_PY_CARET = re.compile(r"^\s*[~^]+\s*$")
_PY_REPEATED = re.compile(r"^\s*\[Previous line repeated \d+ more times?\]$")
_PY_TYPE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*)(?::(?: (?P<value>.*))?)?$")
_PY_GROUP_SUFFIX = re.compile(r" \(\d+ sub-exceptions?\)$")
_PY_STDLIB = re.compile(r"[/\\]lib[/\\]python\d(?:\.\d+)?[/\\]|^<frozen |[/\\]Lib[/\\]")
_PY_LIBRARY = re.compile(r"[/\\](?:site|dist)-packages[/\\]")

_JAVA_FRAME = re.compile(
    r"^\s+at (?:[\w.$-]+/)*(?P<cls>[\w.$<>]+)\.(?P<method>[\w$<>\-]+)\((?P<loc>[^)]*)\)"
)
_JAVA_CAUSE = re.compile(r"^(?:\s*)Caused by: (?P<head>.+)$")
_JAVA_HEAD = re.compile(
    r"^(?:Exception in thread \"[^\"]*\" )?(?P<type>[\w.$]+(?:Exception|Error|Throwable|[\w$]*))(?:: (?P<value>.*))?$"
)
_JAVA_STDLIB = ("java.", "javax.", "jdk.", "sun.", "com.sun.", "kotlin.", "scala.")

_NODE_FRAME = re.compile(
    r"^\s+at (?:(?P<func>.+?) \()?(?P<path>(?:node:)?[^()\s]+?):(?P<line>\d+):(?P<col>\d+)\)?$"
)
_NODE_HEAD = re.compile(r"^(?P<type>[A-Za-z_$][\w$.]*)(?:: (?P<value>.*))?$")

_GO_FUNC = re.compile(r"^(?P<func>[^\s(][^\t]*?)\((?:[^)]*)\)$")
_GO_FILE = re.compile(r"^\t(?P<path>.+?\.go):(?P<line>\d+)(?: \+0x[0-9a-f]+)?$")
_GO_GOROUTINE = re.compile(r"^goroutine \d+ \[[^\]]+\]:$")
_GO_PANIC = re.compile(r"^panic: (?P<value>.*?)(?: \[recovered\])?$")


@dataclass
class _Block:
    """One exception as printed: frames oldest first, type, value, how it links back."""

    frames: list[Frame] = field(default_factory=list)
    type: str | None = None
    value: str = ""
    link: str | None = None  # how this block relates to the block printed before it
    children: list[list[_Block]] = field(default_factory=list)
    is_group: bool = False


@dataclass
class Parsed:
    values: list[Value]
    platform: str | None  # the language the text was recognised as, None if not


def parse(text: str, type_hint: str = "", message_hint: str = "", handled: bool = True) -> Parsed:
    """Sentry exception values for a recorded stack trace; never raises."""
    try:
        found = _parse(text or "")
    except Exception:  # a parser bug must not lose the error itself
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


def _parse(text: str) -> tuple[list[_Block], str] | None:
    if _PY_HEADER in text or _PY_GROUP_HEADER in text or "\n  | " in text:
        return _python(text), "python"
    if "\tat " in text or re.search(r"\n\s+at [\w.$]+\(.*\.(?:java|kt|scala):\d+\)", text):
        return _java(text), "java"
    if re.search(r"\n\s+at .*:\d+:\d+\)?(?:\n|$)", text):
        return _node(text), "node"
    if _GO_GOROUTINE.search(text.split("\n", 3)[0]) or re.search(r"\n\t.+\.go:\d+", text):
        return _go(text), "go"
    if _DOTNET_FRAME.search(text):
        return _dotnet(text), "csharp"
    return None


def _fallback(type_: str, message: str, handled: bool) -> Value:
    value: Value = {
        "type": type_ or "Error",
        "value": _trim(message),
        "mechanism": {"type": "otel", "handled": handled},
    }
    if "." in value["type"] and " " not in value["type"]:
        module, _, name = value["type"].rpartition(".")
        value["module"], value["type"] = module, name
    return value


# Python ------------------------------------------------------------------------------
def _python(text: str) -> list[_Block]:
    return _py_chain(_py_region(text.splitlines(), 0, top=True))


class _Children:
    """The sub-exception regions that follow a group's type line."""

    def __init__(self, regions: list[list[str]], indent: int) -> None:
        self.regions = regions
        self.indent = indent


def _py_region(lines: list[str], indent: int, *, top: bool) -> list[str | _Children]:
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
            regions, i = _py_children(lines, i, margin + 2)
            out.append(_Children(regions, margin + 2))
        elif rest.startswith("+ Exception Group Traceback"):
            out.append(_PY_GROUP_HEADER)
        elif rest.startswith("|"):
            out.append(rest[2:])
    return out


def _py_children(lines: list[str], start: int, indent: int) -> tuple[list[list[str]], int]:
    """Child regions (lines with the margin kept) from ``start``; returns the next index."""
    pad = " " * indent
    regions: list[list[str]] = [[]]
    i = start
    while i < len(lines) and lines[i].startswith(pad) and len(lines[i]) > indent:
        body = lines[i][indent:]
        if body.startswith("+--"):
            if re.match(r"^\+-+ \d+ -+$", body):
                regions.append([])
            elif re.match(r"^\+-+$", body):
                i += 1
                break
        else:
            regions[-1].append(lines[i])
        i += 1
    return [r for r in regions if r], i


def _py_chain(items: list[str | _Children]) -> list[_Block]:
    blocks: list[_Block] = []
    block: _Block | None = None
    pending_link: str | None = None
    for item in items:
        if isinstance(item, _Children):
            if block is not None:
                block.children = [
                    _py_chain(_py_region(region, item.indent, top=False)) for region in item.regions
                ]
            continue
        line = item.rstrip()
        if not line.strip():
            continue
        if line in (_PY_HEADER, _PY_GROUP_HEADER):
            block = _Block(link=pending_link, is_group=line == _PY_GROUP_HEADER)
            blocks.append(block)
            pending_link = None
        elif line in (_PY_CAUSE, _PY_CONTEXT):
            pending_link = "__cause__" if line == _PY_CAUSE else "__context__"
            block = None
        elif (match := _PY_FRAME.match(line)) and (block is None or block.type is None):
            if block is None:
                block = _Block(link=pending_link)
                blocks.append(block)
                pending_link = None
            block.frames.append(_py_frame(match))
        elif block is not None and block.type is None and line.startswith("    "):
            if (
                block.frames
                and "context_line" not in block.frames[-1]
                and not _PY_CARET.match(line)
                and not _PY_REPEATED.match(line)
            ):
                block.frames[-1]["context_line"] = line.strip()
        elif _PY_REPEATED.match(line) or (_PY_CARET.match(line) and block and block.type is None):
            continue
        elif block is not None and block.type is not None:
            block.value = f"{block.value}\n{line}" if block.value else line
        else:
            if block is None:
                block = _Block(link=pending_link)
                blocks.append(block)
                pending_link = None
            _py_type_line(block, line)
    return [b for b in blocks if b.type is not None or b.frames]


def _py_type_line(block: _Block, line: str) -> None:
    match = _PY_TYPE.match(line)
    if match is None:
        block.type, block.value = "Error", line
        return
    block.type, block.value = match.group("type"), match.group("value") or ""
    if block.children or _PY_GROUP_SUFFIX.search(block.value):
        block.is_group = True
        block.value = _PY_GROUP_SUFFIX.sub("", block.value)


def _py_frame(match: re.Match[str]) -> Frame:
    path = match.group("path")
    frame: Frame = {"abs_path": path, "lineno": int(match.group("lineno"))}
    func = match.group("func")
    if func:
        frame["function"] = func
    frame.update(_py_location(path))
    return frame


_LOCATIONS: dict[str, dict[str, Any]] = {}


def _py_location(path: str) -> dict[str, Any]:
    """filename, in_app and module for a path; cached, as the same files recur."""
    known = _LOCATIONS.get(path)
    if known is not None:
        return known
    marker = _PY_LIBRARY.search(path) or _PY_STDLIB.search(path)
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


# Java --------------------------------------------------------------------------------
def _java(text: str) -> list[_Block]:
    blocks: list[_Block] = []
    block: _Block | None = None
    suppressed = False
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line.strip():
            continue
        if (match := _JAVA_FRAME.match(line)) and block is not None:
            if not suppressed:
                block.frames.append(_java_frame(match))
            continue
        if line.lstrip().startswith("... ") and line.rstrip().endswith(
            ("more", "common frames omitted")
        ):
            continue
        if line.lstrip().startswith("Suppressed: "):
            suppressed = True
            continue
        cause = _JAVA_CAUSE.match(line)
        head = _JAVA_HEAD.match(cause.group("head") if cause else line.strip())
        if cause or block is None:
            suppressed = False
            block = _Block(link="cause" if cause else None)
            blocks.append(block)
            if head:
                block.type, block.value = head.group("type"), head.group("value") or ""
            else:
                block.type, block.value = "Exception", line.strip()
        elif not suppressed and not block.frames:
            block.value = f"{block.value}\n{line}" if block.value else line
    return _newest_first(blocks)


def _java_frame(match: re.Match[str]) -> Frame:
    cls, method, loc = match.group("cls"), match.group("method"), match.group("loc")
    frame: Frame = {"module": cls, "function": method, "in_app": not cls.startswith(_JAVA_STDLIB)}
    filename, _, lineno = loc.partition(":")
    if filename and filename not in ("Native Method", "Unknown Source"):
        frame["filename"] = filename
    if lineno.isdigit():
        frame["lineno"] = int(lineno)
    return frame


def _newest_first(blocks: list[_Block]) -> list[_Block]:
    """Java/Go print the main exception first and causes after: make it oldest first."""
    for block in blocks:
        block.frames.reverse()
    ordered = list(reversed(blocks))
    # In the printed order each cause follows what it caused; reversed, the link moves.
    links = [b.link for b in ordered]
    for index, block in enumerate(ordered):
        block.link = links[index - 1] if index else None
    return ordered


# Node.js -----------------------------------------------------------------------------
def _node(text: str) -> list[_Block]:
    block = _Block()
    head: list[str] = []
    for raw in text.splitlines():
        line = raw.rstrip()
        match = _NODE_FRAME.match(line)
        if match:
            block.frames.append(_node_frame(match))
        elif not block.frames and line.strip():
            head.append(line)
    first = _NODE_HEAD.match(head[0]) if head else None
    if first:
        block.type = first.group("type")
        block.value = "\n".join([first.group("value") or "", *head[1:]]).strip()
    else:
        block.type, block.value = "Error", "\n".join(head)
    block.frames.reverse()
    return [block]


def _node_frame(match: re.Match[str]) -> Frame:
    path = match.group("path")
    frame: Frame = {
        "abs_path": path,
        "filename": path,
        "lineno": int(match.group("line")),
        "colno": int(match.group("col")),
        "in_app": "/node_modules/" not in path and not path.startswith("node:"),
    }
    func = match.group("func")
    if func:
        frame["function"] = func.removeprefix("async ").removeprefix("new ")
    return frame


# .NET --------------------------------------------------------------------------------
_DOTNET_FRAME = re.compile(
    r"^\s+at (?P<func>[^\s(]+)\((?P<args>[^)]*)\)(?: in (?P<path>.+?):line (?P<line>\d+))?\s*$",
    re.MULTILINE,
)
_DOTNET_HEAD = re.compile(r"^(?P<type>[\w.`]+(?:Exception|Error)[\w`]*): (?P<value>.*)$")
_DOTNET_LIBRARY = ("System.", "Microsoft.")


def _dotnet(text: str) -> list[_Block]:
    """``Type: message ---> Inner: message`` then ``   at Ns.Class.Method() in f.cs:line 4``.

    Inner exceptions print first in the header line and their frames before
    ``--- End of inner exception stack trace ---``; that order is already oldest first.
    """
    lines = text.splitlines()
    heads = [h.strip() for h in lines[0].split(" ---> ")] if lines else []
    blocks = [_dotnet_block(head) for head in heads] or [_Block()]
    blocks.reverse()  # the innermost (the cause) first
    current = 0
    for line in lines[1:]:
        if "--- End of inner exception stack trace ---" in line:
            current = min(current + 1, len(blocks) - 1)
        elif match := _DOTNET_FRAME.match(line):
            blocks[current].frames.append(_dotnet_frame(match))
    for index, block in enumerate(blocks):
        block.frames.reverse()
        block.link = "inner_exception" if index else None
    return blocks


def _dotnet_block(head: str) -> _Block:
    match = _DOTNET_HEAD.match(head)
    if match:
        return _Block(type=match.group("type"), value=match.group("value"))
    return _Block(type=None, value=head)


def _dotnet_frame(match: re.Match[str]) -> Frame:
    func = match.group("func")
    module, _, function = func.rpartition(".")
    frame: Frame = {"function": function or func, "in_app": not func.startswith(_DOTNET_LIBRARY)}
    if module:
        frame["module"] = module
    if match.group("path"):
        frame["abs_path"] = match.group("path")
        frame["filename"] = match.group("path").replace("\\", "/").rsplit("/", 1)[-1]
        frame["lineno"] = int(match.group("line"))
    return frame


# Go ----------------------------------------------------------------------------------
def _go(text: str) -> list[_Block]:
    block = _Block()
    lines = text.splitlines()
    pending: str | None = None
    for line in lines:
        if (panic := _GO_PANIC.match(line)) and block.type is None:
            block.type, block.value = "panic", panic.group("value")
        elif _GO_GOROUTINE.match(line) or line.startswith("created by "):
            pending = None
            if line.startswith("created by "):
                pending = line.removeprefix("created by ").split(" in goroutine")[0]
        elif (file_match := _GO_FILE.match(line)) and pending is not None:
            block.frames.append(_go_frame(pending, file_match))
            pending = None
        elif func_match := _GO_FUNC.match(line):
            pending = func_match.group("func")
    block.frames.reverse()
    return [block] if block.frames or block.value else []


def _go_frame(function: str, match: re.Match[str]) -> Frame:
    path = match.group("path")
    library = "/go/pkg/mod/" in path or "/src/runtime/" in path or "/usr/local/go/" in path
    package = _go_package(function)
    name = function[len(package) + 1 :] if package != function else function
    frame: Frame = {
        "abs_path": path,
        "filename": path.rsplit("/", 1)[-1],
        "lineno": int(match.group("line")),
        "function": name,
        "in_app": not library and not function.startswith(("runtime.", "runtime/")),
    }
    if package != function:
        frame["module"] = package
    return frame


def _go_package(function: str) -> str:
    """``github.com/a/b.(*T).M`` -> ``github.com/a/b``."""
    slash = function.rfind("/")
    dot = function.find(".", slash + 1)
    return function[:dot] if dot > 0 else function


# Values ------------------------------------------------------------------------------
def _values(chain: list[_Block], handled: bool, platform: str) -> list[Value]:
    """Sentry values with exception ids: the main exception is id 0 and listed last."""
    out: list[tuple[int, Value]] = []
    counter = [0]
    nested = len(chain) > 1 or any(b.children for b in chain)

    def add_chain(blocks: list[_Block], parent: int | None, source: str | None) -> None:
        link_source, link_parent = source, parent
        for index in range(len(blocks) - 1, -1, -1):
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
    block: _Block,
    handled: bool,
    platform: str,
    ident: int,
    parent: int | None,
    source: str | None,
    nested: bool,
) -> Value:
    type_ = block.type or "Error"
    value: Value = {"type": type_, "value": _trim(block.value)}
    if platform in ("python", "java") and "." in type_:
        module, _, name = type_.rpartition(".")
        value["module"], value["type"] = module, name
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
